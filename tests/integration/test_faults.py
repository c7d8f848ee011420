"""Failure modes with real processes: a dispatcher killed mid-job, Redis stopped and restarted."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
import yaml

from services.common.metrics import Metrics
from services.dispatcher.dispatcher import Dispatcher
from services.dispatcher.worker_client import WorkerClient
from services.queue.jobstore import JobStore
from services.queue.redis_server import RedisServer
from tessera.v1 import jobs_pb2, text_pb2
from tests.integration.harness import md, stack, wait_for

ROOT = Path(__file__).resolve().parents[2]
WORDS = " ".join(f"w{i}" for i in range(12))


def test_killed_dispatcher_job_is_reclaimed_and_finished_without_duplicates(redis_server, tmp_path) -> None:
    async def go() -> None:
        async with stack(redis_server.url, delay_s=0.15, dispatcher=False) as s:
            cfg = s.gateway.cfg
            conf = tmp_path / "gw.yaml"
            conf.write_text(yaml.safe_dump({
                "redis_url": cfg.redis_url, "key_prefix": cfg.key_prefix,
                "dispatcher": {"worker_address": f"127.0.0.1:{s.worker_port}", "claim_idle_ms": 1500,
                               "heartbeat_ms": 300}}))
            proc = subprocess.Popen([sys.executable, "-m", "services.dispatcher", "--config", str(conf)], cwd=ROOT,
                                    env={**os.environ, "PYTHONPATH": str(ROOT)}, stderr=subprocess.DEVNULL)
            try:
                sub = await s.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=jobs_pb2.JobSpec(
                    text=text_pb2.TextRequest(model="echo", prompt=WORDS))), metadata=md())
                jid = sub.job.id

                async def streamed(n: int) -> bool:
                    rec = await s.store.get(jid)
                    return rec.tokens >= n

                await wait_for(lambda: streamed(3), timeout=20)
            finally:
                proc.send_signal(signal.SIGKILL)  # no cleanup, no ack: its pending entry is orphaned
                proc.wait()
            killed_at = (await s.store.get(jid)).tokens
            assert 3 <= killed_at < 12
            survivor = Dispatcher(s.store, WorkerClient(f"127.0.0.1:{s.worker_port}", "text"), cfg.dispatcher,
                                  Metrics())
            task = asyncio.create_task(survivor.run())
            try:
                async def done() -> bool:
                    return (await s.store.get(jid)).job.state == jobs_pb2.JOB_STATE_SUCCEEDED

                await wait_for(done, timeout=20)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            rec = await s.store.get(jid)
            assert rec.job.attempts == 2
            assert rec.job.result.text.text == WORDS
            assert s.worker.skips[jid] >= killed_at  # the second attempt resumed, it did not restart
            # The survivor also named the killed dispatcher's call to CancelCall (the claim recorded
            # its id): behind Serve's proxy that orphan could otherwise decode to the end.
            first_call, second_call = s.worker.call_ids[jid]
            await wait_for(lambda: (first_call, jid) in s.worker.cancel_requests, timeout=5)
            assert (second_call, jid) not in s.worker.cancel_requests
            assert (await s.store.get(jid)).call_id == second_call
            chunks = [e.event.text_chunk.text async for e in s.jobs.WatchJob(
                jobs_pb2.WatchJobRequest(job_id=jid), metadata=md()) if e.event.WhichOneof("kind") == "text_chunk"]
            assert "".join(chunks) == WORDS  # every word exactly once across both attempts
            assert await s.store.r.xlen(s.store.queue_key("text")) == 0
    asyncio.run(go())


def test_redis_outage_gives_unavailable_then_recovers() -> None:
    async def go(server: RedisServer) -> None:
        async with stack(server.url) as s:
            req = text_pb2.GenerateRequest(request=text_pb2.TextRequest(model="echo", prompt="a b c"))
            assert (await s.text.Generate(req, metadata=md(), timeout=10)).result.text == "a b c"
            server.stop()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.text.Generate(req, metadata=md(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "Redis" in ei.value.details()
            server.start()  # an empty Redis: the dispatcher must recreate its consumer group
            for _ in range(100):
                try:
                    resp = await s.text.Generate(req, metadata=md(), timeout=10)
                    break
                except grpc.aio.AioRpcError as e:
                    assert e.code() == grpc.StatusCode.UNAVAILABLE
                    await asyncio.sleep(0.2)
            assert resp.result.text == "a b c"

    with RedisServer() as server:
        asyncio.run(go(server))


def test_store_rejects_writes_from_a_stale_attempt(redis_server) -> None:
    async def go() -> None:
        store = JobStore.from_url(redis_server.url, prefix=f"t{os.urandom(3).hex()}:")
        jid, _ = await store.submit("o", "text", jobs_pb2.JobSpec(text=text_pb2.TextRequest(prompt="x")))
        first = await store.start(jid)
        second = await store.start(jid)  # another dispatcher reclaimed it
        assert (first, second) == (1, 2)
        assert not await store.append_chunk(jid, first, b"", 1, 0.1)
        assert await store.append_chunk(jid, second, b"", 1, 0.1)
        assert await store.cancel(jid)
        assert not await store.append_chunk(jid, second, b"", 2, 0.2)  # cancelled: nobody writes
        assert not await store.cancel(jid)  # a job ends exactly once
        await store.aclose()
    asyncio.run(go())


def test_a_quiet_job_is_not_mistaken_for_redis_being_down(redis_server) -> None:
    """A watcher of a job with no events for longer than the Redis socket timeout (queued, a slow
    step, awaiting reclaim) keeps waiting: blocking reads end before the socket times out."""
    async def go() -> None:
        store = JobStore.from_url(redis_server.url, socket_timeout_s=0.5, prefix=f"q{os.urandom(4).hex()}:")
        try:
            job_id, _ = await store.submit("alice", "text", jobs_pb2.JobSpec(
                text=text_pb2.TextRequest(model="echo", prompt="a")))
            kinds: list[str] = []

            async def watch() -> None:
                async for _, ev in store.events(job_id):
                    kinds.append(ev.WhichOneof("kind"))

            watcher = asyncio.create_task(watch())
            await asyncio.sleep(1.6)  # three socket timeouts without an event
            assert not watcher.done()
            assert await store.cancel(job_id)
            await asyncio.wait_for(watcher, 5)
            assert kinds == ["state", "state", "error"]  # QUEUED, CANCELLED, the cancellation status
        finally:
            await store.aclose()
    asyncio.run(go())
