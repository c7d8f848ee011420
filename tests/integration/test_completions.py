"""Unary calls wait for their job's final event pushed over pub/sub (Completions), with the final
stream as the fallback when a message is lost, on a real redis-server."""

from __future__ import annotations

import asyncio
import os

import grpc
import pytest

from services.gateway.completions import Completions
from services.queue.jobstore import JobStore, new_job_id
from tessera.v1 import jobs_pb2, text_pb2
from tests.integration.harness import md, stack

SPEC = jobs_pb2.JobSpec(text=text_pb2.TextRequest(model="echo", prompt="a b c"))
RESULT = jobs_pb2.JobResult(text=text_pb2.TextResult(text="a b c"))


def _store(url: str) -> JobStore:
    return JobStore.from_url(url, prefix=f"c{os.urandom(4).hex()}:")


async def _submit_and_succeed(store: JobStore, job_id: str, notify: str) -> None:
    await store.submit("alice", "text", SPEC, job_id=job_id, notify=notify)
    attempt, _ = await store.claim(job_id)
    assert await store.succeed(job_id, attempt, RESULT)


def test_final_event_is_pushed_without_polling(redis_server) -> None:
    async def go() -> None:
        store = _store(redis_server.url)
        done = Completions(store, first_poll_s=60.0)  # a poll would take a minute: only a push is fast
        done.start()
        try:
            await asyncio.wait_for(done.listening.wait(), 5)
            job_id = new_job_id()
            done.expect(job_id)
            await _submit_and_succeed(store, job_id, done.channel)
            event_id, ev = await asyncio.wait_for(done.wait(job_id), 5)
            assert ev.result.text.text == "a b c"
            assert event_id == (await store.final_event(job_id))[0]  # the final stream's entry id
            assert job_id not in done._waiters  # nothing left behind
        finally:
            await done.stop()
            await store.aclose()
    asyncio.run(go())


def test_lost_message_falls_back_to_the_final_stream(redis_server) -> None:
    async def go() -> None:
        store = _store(redis_server.url)
        done = Completions(store, first_poll_s=0.05)  # never started: every message is lost
        try:
            job_id = new_job_id()
            done.expect(job_id)
            await _submit_and_succeed(store, job_id, done.channel)
            _, ev = await asyncio.wait_for(done.wait(job_id), 5)
            assert ev.result.text.text == "a b c"
            gone = new_job_id()  # a job that never existed (or expired) ends the wait with None
            done.expect(gone)
            assert await asyncio.wait_for(done.wait(gone), 5) is None
        finally:
            await store.aclose()
    asyncio.run(go())


@pytest.mark.parametrize("push", [True, False])
def test_generate_with_and_without_push_and_with_a_repeated_idempotency_key(redis_server, push: bool) -> None:
    async def go() -> None:
        async with stack(redis_server.url, delay_s=0.05) as s:
            if not push:  # the listener is down: unary calls read the final stream instead
                await s.gateway.completions.stop()
                s.gateway.completions.listening.clear()
            req = text_pb2.GenerateRequest(request=text_pb2.TextRequest(prompt="x y z"), idempotency_key="k1")
            first, second = await asyncio.gather(s.text.Generate(req, metadata=md()),
                                                 s.text.Generate(req, metadata=md()))
            assert first.job_id == second.job_id and first.result.text == second.result.text == "x y z"
            bad = text_pb2.GenerateRequest(request=text_pb2.TextRequest(prompt="!fail:no words"))
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await s.text.Generate(bad, metadata=md())
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no words" in err.value.details()
            assert not s.gateway.completions._waiters
    asyncio.run(go())
