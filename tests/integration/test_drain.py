"""A dispatcher told to stop (SIGTERM on a scale-in) drains: it takes no new jobs, lets running ones
finish within its grace, and hands the rest back so another dispatcher resumes them at its next
reclaim, well before the claim timeout a killed dispatcher's jobs wait out. Real Redis, the echo worker."""

from __future__ import annotations

import asyncio
import dataclasses
import time

from services.common.metrics import Metrics
from services.dispatcher.dispatcher import Dispatcher
from services.dispatcher.worker_client import WorkerClient
from tessera.v1 import jobs_pb2
from tests.integration.harness import echo_spec, stack, wait_for

WORDS = " ".join(f"w{i}" for i in range(40))  # 40 tokens at 0.1 s each: a 4 s job


def test_drain_hands_running_jobs_back_and_another_dispatcher_resumes_them(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url, delay_s=0.1, dispatcher=False) as s:
            store = s.store
            # Reclaim after 9 s idle (others look every 3 s): a killed dispatcher's job would wait >= 9 s.
            cfg = dataclasses.replace(s.gateway.cfg.dispatcher, claim_idle_ms=9000)
            worker = f"127.0.0.1:{s.worker_port}"
            a = Dispatcher(store, WorkerClient(worker, "text"), cfg, Metrics(), name="a")
            b = Dispatcher(store, WorkerClient(worker, "text"), cfg, Metrics(), name="b")
            run_a = asyncio.create_task(a.run())
            job, _ = await store.submit("alice", "text", echo_spec(WORDS))

            async def some_tokens() -> bool:
                return (await store.get(job)).tokens >= 5
            await wait_for(some_tokens, timeout=20)
            t0 = time.monotonic()
            assert await a.drain(grace_s=0) == 1
            await asyncio.wait_for(run_a, timeout=10)  # drained: run() returns by itself
            late, _ = await store.submit("alice", "text", echo_spec("after the drain"))
            run_b = asyncio.create_task(b.run())
            try:
                async def done() -> bool:
                    states = [(await store.get(j)).job.state for j in (job, late)]
                    return all(st == jobs_pb2.JOB_STATE_SUCCEEDED for st in states)
                await wait_for(done, timeout=30)
                elapsed = time.monotonic() - t0
            finally:
                run_b.cancel()
                await asyncio.gather(run_b, return_exceptions=True)
            rec = await store.get(job)
            assert rec.job.result.text.text == WORDS  # every word once: resumed, not restarted or cut
            assert s.worker.skips[job] >= 5  # the second call skipped what the first had delivered
            assert elapsed < 9.0, f"handed back, yet resumed only after {elapsed:.1f} s (the claim timeout)"
            assert s.worker.started.count(late) == 1  # the drained dispatcher took no new job
    asyncio.run(go())


def test_drain_lets_running_jobs_finish_within_the_grace(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url, delay_s=0.05, dispatcher=False) as s:
            store = s.store
            d = Dispatcher(store, WorkerClient(f"127.0.0.1:{s.worker_port}", "text"), s.gateway.cfg.dispatcher,
                           Metrics())
            run = asyncio.create_task(d.run())
            job, _ = await store.submit("alice", "text", echo_spec("one two three four five six"))
            await wait_for(lambda: _started(s.worker, job), timeout=20)
            assert await d.drain(grace_s=10) == 0  # it finished in time: nothing to hand back
            await asyncio.wait_for(run, timeout=10)
            rec = await store.get(job)
            assert rec.job.state == jobs_pb2.JOB_STATE_SUCCEEDED and rec.job.result.text.text == \
                "one two three four five six"
            assert await store.r.xlen(store.queue_key("text")) == 0  # its entry retired, not left pending
    asyncio.run(go())


async def _started(worker, job: str) -> bool:
    return job in worker.started
