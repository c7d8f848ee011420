"""Gateway + Redis + dispatcher against the echo worker: the queue plane and its failure modes."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.gateway.auth import Authenticator
from tessera.v1 import jobs_pb2, text_pb2
from tests.integration.harness import KEY, OTHER_KEY, md, stack, wait_for

PROMPT = "one two three four five six seven eight"


def run(coro):
    return asyncio.run(coro)


def text_req(prompt: str = PROMPT, **params: object) -> text_pb2.TextRequest:
    return text_pb2.TextRequest(model="echo", prompt=prompt, params=text_pb2.TextParams(**params))


def violations(err: grpc.aio.AioRpcError) -> list[tuple[str, str]]:
    st = rpc_status.from_call(err)
    assert st is not None, "no rich status details"
    out = []
    for d in st.details:
        br = error_details_pb2.BadRequest()
        if d.Unpack(br):
            out += [(v.field, v.description) for v in br.field_violations]
    return out


def test_generate_and_stream_end_to_end(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url) as s:
            resp = await s.text.Generate(text_pb2.GenerateRequest(request=text_req()), metadata=md(), timeout=10)
            assert resp.result.text == PROMPT
            assert resp.result.finish_reason == 1 and resp.result.usage.completion_tokens == 8
            u = resp.result.usage
            assert 0 <= u.queue_s <= u.time_to_first_chunk_s <= u.total_s and u.total_s > 0
            msgs = [m async for m in s.text.GenerateStream(text_pb2.GenerateStreamRequest(request=text_req()),
                                                             metadata=md(), timeout=10)]
            assert msgs[0].job_id and not msgs[0].WhichOneof("payload")
            chunks = [m.chunk.text for m in msgs if m.WhichOneof("payload") == "chunk"]
            assert "".join(chunks) == PROMPT and len(chunks) == 8
            assert msgs[-1].result.text == PROMPT
            job = (await s.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=msgs[0].job_id), metadata=md())).job
            assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED and job.attempts == 1
            assert await s.store.r.xlen(s.store.queue_key("text")) == 0  # finished entries leave the queue
            # Every chunk is its own event, in order, before the terminal events, however the
            # dispatcher batched its writes; the final stream holds the result alone.
            events = [jobs_pb2.JobEvent.FromString(f[b"e"])
                      for _, f in await s.store.r.xrange(s.store.events_key(resp.job_id))]
            kinds = [e.WhichOneof("kind") for e in events]
            assert kinds == ["state", "state"] + ["text_chunk"] * 8 + ["state", "result"]
            assert "".join(e.text_chunk.text for e in events if e.text_chunk.text) == PROMPT
            assert [e.text_chunk.total_tokens for e in events if e.text_chunk.text] == list(range(1, 9))
            final = await s.store.r.xrange(s.store.final_key(resp.job_id))
            assert len(final) == 1 and jobs_pb2.JobEvent.FromString(final[0][1][b"e"]).result.text.text == PROMPT
            assert (await s.store.r.xpending(s.store.queue_key("text"), "dispatchers"))["pending"] == 0
            assert (await s.store.get(resp.job_id)).tokens == 8
            # Calls that ran to the end are never named to CancelCall; each carried its own call id.
            await asyncio.sleep(0.2)
            assert s.worker.cancel_requests == []
            ids = [s.worker.call_ids[j] for j in (resp.job_id, job.id)]
            assert len(ids[0]) == len(ids[1]) == 1 and ids[0][0] and ids[0] != ids[1]
    run(go())


def test_bad_input_is_rejected_with_field_violations_and_nothing_is_enqueued(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url, dispatcher=False) as s:
            bad = [
                (text_req(prompt="   "), "request.prompt"),
                (text_req(prompt="x" * 40000), "request.prompt"),
                (text_req(temperature=-1.0), "request.params.temperature"),
                (text_req(top_p=1.5), "request.params.top_p"),
                (text_req(max_tokens=100000), "request.params.max_tokens"),
                (text_req(tau_conf=2.0), "request.params.tau_conf"),
                (text_pb2.TextRequest(model="nope", prompt="hi"), "request.model"),
            ]
            for req, field in bad:
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await s.text.Generate(text_pb2.GenerateRequest(request=req), metadata=md(), timeout=5)
                assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert field in [f for f, _ in violations(ei.value)], ei.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(), metadata=md())
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert await s.store.r.xlen(s.store.queue_key("text")) == 0
            assert not await s.store.r.keys(f"{s.store.p}job:*")
    run(go())


def test_auth_rate_limit_and_owner_isolation(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url, dispatcher=False, rate=0.5, burst=2) as s:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.jobs.ListJobs(jobs_pb2.ListJobsRequest())
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md("wrong"))
            assert ei.value.code() == grpc.StatusCode.UNAUTHENTICATED
            sub = await s.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=jobs_pb2.JobSpec(text=text_req())),
                                         metadata=md())
            # bob cannot see alice's job
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=sub.job.id), metadata=md(OTHER_KEY))
            assert ei.value.code() == grpc.StatusCode.NOT_FOUND
            listed = await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md(OTHER_KEY))
            assert not listed.jobs
            # alice's burst of 2 is spent (SubmitJob + this call): the next call is rate limited
            await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md())
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md())
            assert ei.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    run(go())


def test_each_call_hashes_its_key_once_and_concurrent_callers_keep_their_owner(redis_server, monkeypatch) -> None:
    lookups: list[int] = []
    real = Authenticator._lookup

    def counted(self: Authenticator, metadata: Any) -> Any:
        lookups.append(1)
        return real(self, metadata)

    monkeypatch.setattr(Authenticator, "_lookup", counted)

    async def go() -> None:
        async with stack(redis_server.url, dispatcher=False) as s:
            submit = jobs_pb2.SubmitJobRequest(spec=jobs_pb2.JobSpec(text=text_req()))
            subs = await asyncio.gather(*(s.jobs.SubmitJob(submit, metadata=md(KEY if i % 2 else OTHER_KEY))
                                          for i in range(10)))
            # The interceptor authenticates; the servicer reuses its answer for the job's owner.
            assert len(lookups) == 10
            mine = await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md())
            theirs = await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md(OTHER_KEY))
            assert {j.id for j in mine.jobs} == {r.job.id for i, r in enumerate(subs) if i % 2}
            assert {j.id for j in theirs.jobs} == {r.job.id for i, r in enumerate(subs) if not i % 2}
            assert len(lookups) == 12
    run(go())


def test_idempotency_watch_resume_and_list(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url) as s:
            req = jobs_pb2.SubmitJobRequest(spec=jobs_pb2.JobSpec(text=text_req()), idempotency_key="k1")
            a = await s.jobs.SubmitJob(req, metadata=md())
            b = await s.jobs.SubmitJob(req, metadata=md())
            assert a.created and not b.created and a.job.id == b.job.id
            events = [r.event async for r in s.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=a.job.id),
                                                              metadata=md(), timeout=10)]
            kinds = [e.WhichOneof("kind") for e in events]
            assert kinds[0] == "state" and kinds[-1] == "result" and kinds.count("text_chunk") == 8
            # resume after the 4th event: exactly the rest, in order
            rest = [r.event async for r in s.jobs.WatchJob(
                jobs_pb2.WatchJobRequest(job_id=a.job.id, after_event_id=events[3].event_id), metadata=md())]
            assert [e.event_id for e in rest] == [e.event_id for e in events[4:]]
            listed = await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), metadata=md())
            assert [j.id for j in listed.jobs] == [a.job.id] and listed.next_page_token == ""
    run(go())


def test_cancel_running_job_stops_the_worker(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url, delay_s=0.2) as s:
            sub = await s.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=jobs_pb2.JobSpec(text=text_req())),
                                         metadata=md())
            jid = sub.job.id
            await wait_for(lambda: _has_chunks(s, jid))
            job = (await s.jobs.CancelJob(jobs_pb2.CancelJobRequest(job_id=jid), metadata=md())).job
            assert job.state == jobs_pb2.JOB_STATE_CANCELLED
            await wait_for(lambda: jid in s.worker.cancelled)
            # The worker is also told by name (Ray Serve's proxy can lose a channel cancellation).
            await wait_for(lambda: (s.worker.call_ids[jid][-1], jid) in s.worker.cancel_requests)
            await asyncio.sleep(0.5)
            job = (await s.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=jid), metadata=md())).job
            assert job.state == jobs_pb2.JOB_STATE_CANCELLED and job.error.code == grpc.StatusCode.CANCELLED.value[0]
            assert await s.store.r.xlen(s.store.queue_key("text")) == 0
    run(go())


def test_client_cancel_and_deadline_stop_interactive_jobs(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url, delay_s=0.2) as s:
            call = s.text.GenerateStream(text_pb2.GenerateStreamRequest(request=text_req()), metadata=md())
            first = await call.read()
            await call.read()  # wait for a text chunk: the job is running
            call.cancel()
            await wait_for(lambda: first.job_id in s.worker.cancelled)
            rec = await s.store.get(first.job_id)
            assert rec.job.state == jobs_pb2.JOB_STATE_CANCELLED
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.text.Generate(text_pb2.GenerateRequest(request=text_req()), metadata=md(), timeout=0.7)
            assert ei.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            await wait_for(lambda: len(s.worker.cancelled) == 2, timeout=5)
            # Both calls were named to CancelCall: the cancelled one and the one past its deadline.
            named = {(s.worker.call_ids[j][-1], j) for j in s.worker.cancelled}
            await wait_for(lambda: named <= set(s.worker.cancel_requests), timeout=5)
            assert all(call_id for call_id, _ in named)
    run(go())


def test_worker_rejection_fails_the_job_without_retry(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url) as s:
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.text.Generate(text_pb2.GenerateRequest(request=text_req("!fail:prompt too long for model")),
                                      metadata=md(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "prompt too long" in ei.value.details()
            assert len(s.worker.started) == 1
    run(go())


def test_unavailable_worker_exhausts_attempts_into_the_dead_letter_stream(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url, max_attempts=2, retry_backoff_ms=50) as s:
            await s.gateway.worker.channel.close()  # every worker call now fails with a retryable error
            from services.dispatcher.worker_client import WorkerClient

            s.gateway.worker.__init__("127.0.0.1:1", "text")  # nothing listens on port 1
            del WorkerClient
            sub = await s.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=jobs_pb2.JobSpec(text=text_req())),
                                         metadata=md())

            async def failed() -> bool:
                rec = await s.store.get(sub.job.id)
                return rec.job.state == jobs_pb2.JOB_STATE_FAILED

            await wait_for(failed, timeout=15)
            rec = await s.store.get(sub.job.id)
            assert rec.job.attempts == 3 and "attempts" in rec.job.error.message
            dlq = await s.store.r.xrange(s.store.dlq_key("text"))
            assert [f[b"job_id"].decode() for _, f in dlq] == [sub.job.id]
    run(go())


async def _has_chunks(s, jid: str) -> bool:
    rec = await s.store.get(jid)
    return rec is not None and rec.tokens >= 2
