"""The child side of loadtest.stack: what each of its processes runs (echo worker, gateway,
dispatcher, bare relay), started by the parent as `python -m loadtest.children ROLE ...`.

Protocol with the parent: the child prints `READY <port>`, then answers one JSON line per command
line on its stdin, and shuts down when its stdin closes. The gateway child takes the diagnostics
commands (loadtest.probe): probe_on / probe_off / probe_stats, profile_start / profile_stop [N].
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from loadtest.probe import Probe, profile_report

DEFAULT_KEY = "tessera-loadtest-key"


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _serve_commands(handle: Callable[[list[str]], Awaitable[dict[str, Any]]]) -> None:
    """Answer command lines until stdin closes (the parent went away or asked us to stop)."""
    reader = await _stdin_lines()
    while line := await reader.readline():
        words = line.decode().split()
        if not words:
            continue
        try:
            reply = await handle(words)
        except Exception as e:  # report, keep serving: a bad command must not kill the stack
            reply = {"error": f"{type(e).__name__}: {e}"}
        _say(json.dumps(reply))


async def _no_commands(words: list[str]) -> dict[str, Any]:
    return {"error": f"unknown command {words[0]!r}"}


async def _serve_until_stdin_closes(server: Any, port: int, *cleanup: Callable[[], Awaitable[None]]) -> None:
    """For children that take no commands: report ready, serve until the parent closes stdin, stop."""
    _say(f"READY {port}")
    try:
        await _serve_commands(_no_commands)
    finally:
        await server.stop(0)
        for close in cleanup:
            await close()


async def _worker_child(a: argparse.Namespace) -> None:
    from services.workers.echo_worker import start_echo_worker

    server, port, _ = await start_echo_worker(0, a.delay_s)
    await _serve_until_stdin_closes(server, port)


async def _relay_child(a: argparse.Namespace) -> None:
    """The cheapest possible gateway, as a floor for the real one: a grpc.aio server whose Generate
    forwards straight to the worker and returns what it streamed. No auth, validation, Redis, job
    record or events; what it adds to a direct call is what one more Python gRPC hop costs here."""
    import grpc

    from services.dispatcher.worker_client import WorkerClient
    from tessera.v1 import text_pb2, text_pb2_grpc

    worker = WorkerClient(a.worker, "text")

    class Relay(text_pb2_grpc.TextGenerationServiceServicer):
        async def Generate(self, req: text_pb2.GenerateRequest, ctx: Any) -> text_pb2.GenerateResponse:
            parts, total = [], 0
            model = ""
            async for msg in worker.generate("relay", req.request, 0, ctx.time_remaining()):
                parts.append(msg.text)
                total += msg.token_count
                model = msg.model or model
            return text_pb2.GenerateResponse(result=text_pb2.TextResult(
                text="".join(parts), usage=text_pb2.TextUsage(completion_tokens=total), model=model))

    server = grpc.aio.server()
    text_pb2_grpc.add_TextGenerationServiceServicer_to_server(Relay(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await _serve_until_stdin_closes(server, port, worker.close)

def loadtest_auth(api_key: str) -> Any:
    """One API key with a rate limit far above any load we generate (the default is 20 req/s)."""
    from services.gateway.auth import ApiKey, Authenticator, hash_key
    from services.gateway.config import AuthConfig

    digest = hash_key(api_key)
    return Authenticator(AuthConfig(enabled=True), {digest: ApiKey("loadtest", digest, 1e9, 1_000_000_000)})


async def _gateway_child(a: argparse.Namespace) -> None:
    import logging

    from services.dispatcher.config import DispatcherConfig
    from services.gateway.config import GatewayConfig
    from services.gateway.server import Gateway

    logging.basicConfig(level=logging.WARNING, format="gateway child %(levelname)s %(name)s: %(message)s")
    cfg = GatewayConfig(port=a.port, metrics_port=0, redis_url=a.redis_url, key_prefix=a.prefix, grace_s=0.5,
                        dispatcher=DispatcherConfig(enabled=a.in_process_dispatcher == 1, worker_address=a.worker,
                                                    max_in_flight=a.max_in_flight))
    gw = Gateway(cfg)
    port = await gw.start(loadtest_auth(a.api_key))
    store = gw.store
    assert store is not None
    # Private attributes, read only: they name the Lua scripts in the probe's EVALSHA counts.
    probe = Probe({store._submit.sha: "SUBMIT", store._transition.sha: "TRANSITION",
                   store._start.sha: "START", store._chunk.sha: "CHUNK"})
    prof: cProfile.Profile | None = None
    prof_t0 = 0.0
    _say(f"READY {port}")

    async def handle(words: list[str]) -> dict[str, Any]:
        nonlocal probe, prof, prof_t0
        cmd = words[0]
        if cmd == "probe_on":
            probe = Probe(probe.script_names)  # fresh counters
            probe.on()
            return {"ok": True}
        if cmd == "probe_off":
            probe.off()
            return {"ok": True}
        if cmd == "probe_stats":
            return probe.stats()
        if cmd == "profile_start":
            prof = cProfile.Profile()
            prof_t0 = time.perf_counter()
            prof.enable()
            return {"ok": True}
        if cmd == "profile_stop":
            if prof is None:
                return {"error": "profile_start first"}
            prof.disable()
            report = profile_report(prof, time.perf_counter() - prof_t0, int(words[1]) if len(words) > 1 else 25)
            prof = None
            return report
        return {"error": f"unknown command {cmd!r}"}

    try:
        await _serve_commands(handle)
    finally:
        probe.off()
        await _stop_gateway(gw)


async def _stop_gateway(gw: Any, timeout_s: float = 3.0) -> None:
    """gw.stop(), bounded. Gateway.stop() cancels its background tasks once and gathers them; on
    Python 3.11 asyncio.wait_for (which redis-py uses for every send when socket_timeout is set)
    can swallow a cancellation that lands as the send completes, and the task then runs on, so the
    gather never returns. Cancel the survivors again rather than hang the stack's shutdown."""
    stop = asyncio.ensure_future(gw.stop())
    for _ in range(3):
        done, _ = await asyncio.wait({stop}, timeout=timeout_s)
        if done:
            return
        alive = [t for t in gw.tasks if not t.done()]
        print(f"gateway child: Gateway.stop() still waiting after {timeout_s:.0f}s on {len(alive)} task(s) "
              "that ignored cancellation; cancelling them again", file=sys.stderr, flush=True)
        for t in alive:
            t.cancel()


async def _dispatcher_child(a: argparse.Namespace) -> None:
    from services.common.metrics import Metrics
    from services.dispatcher.config import DispatcherConfig
    from services.dispatcher.dispatcher import Dispatcher
    from services.dispatcher.worker_client import WorkerClient
    from services.queue.jobstore import JobStore

    store = JobStore.from_url(a.redis_url, prefix=a.prefix)
    worker = WorkerClient(a.worker, "text")
    task = asyncio.create_task(Dispatcher(store, worker, DispatcherConfig(worker_address=a.worker,
                                                                          max_in_flight=a.max_in_flight),
                                          Metrics()).run())
    _say("READY 0")
    try:
        await _serve_commands(_no_commands)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 3.0)
        await worker.close()


CHILDREN: dict[str, Callable[[argparse.Namespace], Awaitable[None]]] = {
    "worker": _worker_child, "gateway": _gateway_child, "dispatcher": _dispatcher_child, "relay": _relay_child}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="One process of a loadtest.stack (started by its parent)")
    ap.add_argument("role", choices=sorted(CHILDREN))
    ap.add_argument("--redis-url")
    ap.add_argument("--prefix", default="lt:")
    ap.add_argument("--worker", help="the echo worker's address")
    ap.add_argument("--port", type=int, default=0, help="gateway port (0 = any free port)")
    ap.add_argument("--api-key", default=DEFAULT_KEY)
    ap.add_argument("--max-in-flight", type=int, default=64, help="dispatcher window (DispatcherConfig)")
    ap.add_argument("--in-process-dispatcher", type=int, default=1, help="1: the gateway dispatches itself")
    ap.add_argument("--delay-s", type=float, default=0.0, help="echo worker delay per word")
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    a = ap.parse_args(argv)
    # Ctrl-C in a terminal signals the whole process group; the parent decides when we stop
    # (by closing our stdin), so it can shut the stack down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if a.loop == "uvloop":  # an experiment knob: the gateway itself runs on asyncio's default loop
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(CHILDREN[a.role](a))


if __name__ == "__main__":
    main()
