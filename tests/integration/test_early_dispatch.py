"""A fresh text job's worker call starts from the spec in its queue entry while the dispatcher's
claim is in flight; the claim still decides whether the call counts."""

from __future__ import annotations

import asyncio

from services.common.metrics import Metrics
from services.dispatcher.dispatcher import Dispatcher
from services.dispatcher.worker_client import WorkerClient
from services.queue.jobstore import INLINE_SPEC_BYTES
from tessera.v1 import jobs_pb2
from tests.integration.harness import echo_spec, stack, wait_for


def test_queue_entry_carries_small_text_specs_and_the_call_is_made_once(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url, delay_s=0.05, dispatcher=False) as s:
            store = s.store
            small, _ = await store.submit("alice", "text", echo_spec("a b c"), deadline_ms=4_000_000_000_000)
            big, _ = await store.submit("alice", "text", echo_spec("w" * INLINE_SPEC_BYTES))
            doomed, _ = await store.submit("alice", "text", echo_spec("d e f"))
            entries = {f[b"job_id"].decode(): f for _, f in await store.r.xrange(store.queue_key("text"))}
            assert jobs_pb2.JobSpec.FromString(entries[small][b"spec"]).text.prompt == "a b c"
            assert entries[small][b"deadline_ms"] == b"4000000000000"
            assert b"spec" not in entries[big]  # too large for the queue: read from the record
            assert await store.cancel(doomed)  # cancelled while queued

            d = Dispatcher(store, WorkerClient(f"127.0.0.1:{s.worker_port}", "text"), s.gateway.cfg.dispatcher,
                           Metrics())
            task = asyncio.create_task(d.run())
            try:
                async def ended() -> bool:
                    states = [(await store.get(j)).job.state for j in (small, big)]
                    return all(st == jobs_pb2.JOB_STATE_SUCCEEDED for st in states)

                await wait_for(ended, timeout=20)
                await wait_for(lambda: _no_entries(store), timeout=5)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            assert (await store.get(small)).job.result.text.text == "a b c"
            assert s.worker.started.count(small) == 1  # the early call was the job's call, not a second one
            assert s.worker.started.count(big) == 1
            rec = await store.get(doomed)
            assert rec.job.state == jobs_pb2.JOB_STATE_CANCELLED and rec.tokens == 0
            # If the early call reached the worker at all, the claim's verdict cancelled it.
            assert doomed not in s.worker.started or doomed in s.worker.cancelled
    asyncio.run(go())


async def _no_entries(store) -> bool:
    return await store.r.xlen(store.queue_key("text")) == 0
