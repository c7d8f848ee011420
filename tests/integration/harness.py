"""A gateway + echo worker on loopback, with its own Redis key prefix per test."""

from __future__ import annotations

import asyncio
import inspect
import os
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass

import grpc

from services.dispatcher.config import DispatcherConfig
from services.gateway.auth import ApiKey, Authenticator, hash_key
from services.gateway.config import AuthConfig, GatewayConfig
from services.gateway.server import Gateway
from services.workers.echo_worker import EchoTextWorker, start_echo_worker
from tessera.v1 import jobs_pb2, jobs_pb2_grpc, text_pb2, text_pb2_grpc

KEY, OTHER_KEY = "test-key-alice", "test-key-bob"


@dataclass
class Stack:
    gateway: Gateway
    worker: EchoTextWorker
    worker_port: int
    channel: grpc.aio.Channel
    text: text_pb2_grpc.TextGenerationServiceStub
    jobs: jobs_pb2_grpc.JobServiceStub

    @property
    def store(self):
        return self.gateway.store


def echo_spec(prompt: str) -> jobs_pb2.JobSpec:
    """A text job for the echo worker (it streams the prompt back word by word)."""
    return jobs_pb2.JobSpec(text=text_pb2.TextRequest(model="echo", prompt=prompt))


def md(key: str = KEY) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {key}"),)


def auth(rate: float = 1000.0, burst: int = 1000) -> Authenticator:
    keys = {hash_key(k): ApiKey(i, hash_key(k), rate, burst) for i, k in (("alice", KEY), ("bob", OTHER_KEY))}
    return Authenticator(AuthConfig(enabled=True), keys)


@asynccontextmanager
async def stack(redis_url: str, delay_s: float = 0.0, dispatcher: bool = True, rate: float = 1000.0,
                burst: int = 1000, **dispatch: int) -> AsyncIterator[Stack]:
    server, port, worker = await start_echo_worker(0, delay_s)
    cfg = GatewayConfig(port=0, metrics_port=0, redis_url=redis_url, key_prefix=f"t{os.urandom(4).hex()}:",
                        dispatcher=DispatcherConfig(enabled=dispatcher, worker_address=f"127.0.0.1:{port}",
                                                    **{"claim_idle_ms": 1500, "heartbeat_ms": 300, **dispatch}))
    cfg.text.models = ["echo", "other"]
    gw = Gateway(cfg)
    gport = await gw.start(auth(rate, burst))
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gport}")
    try:
        yield Stack(gw, worker, port, channel, text_pb2_grpc.TextGenerationServiceStub(channel),
                    jobs_pb2_grpc.JobServiceStub(channel))
    finally:
        await channel.close()
        await gw.stop()
        await server.stop(0)


async def wait_for(pred, timeout: float = 10.0, every: float = 0.02) -> None:
    """Poll `pred` (returning a bool, or an awaitable of one) until it holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not (await r if inspect.isawaitable(r := pred()) else r):
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(every)


@contextmanager
def running_gateway(cfg: GatewayConfig) -> Iterator[str]:
    """A gateway (with its dispatchers) on its own event loop thread, for synchronous tests; yields its
    address. The test keys of `auth()` are accepted."""
    loop = asyncio.new_event_loop()
    gw = Gateway(cfg)
    port = loop.run_until_complete(gw.start(auth()))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        asyncio.run_coroutine_threadsafe(gw.stop(), loop).result(30)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
