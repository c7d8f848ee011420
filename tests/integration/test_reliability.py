"""Regression tests for issue 21's findings, with real Redis and the gateway on loopback: acknowledged
jobs survive a Redis restart, health follows the job store, a dead dispatcher's jobs are not starved
by new intake, resuming from the last event returns at once, worker failures are classified, prompts
too long in tokens are refused before enqueueing, and malformed requests get INVALID_ARGUMENT."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.metrics import Metrics
from services.dispatcher.config import DispatcherConfig
from services.dispatcher.dispatcher import Dispatcher
from services.dispatcher.worker_client import WorkerClient
from services.queue.redis_server import RedisServer
from services.workers.echo_worker import ECHO_POSITIONS, ECHO_PROMPT_OVERHEAD
from tessera.v1 import jobs_pb2, models_pb2, models_pb2_grpc, text_pb2
from tests.integration.harness import echo_spec, md, stack, wait_for


def _gen(prompt: str, **params: float) -> text_pb2.GenerateRequest:
    return text_pb2.GenerateRequest(request=text_pb2.TextRequest(model="echo", prompt=prompt,
                                                                 params=text_pb2.TextParams(**params)))


async def _final(s, job_id: str) -> jobs_pb2.Job:
    async def ended() -> bool:
        return (await s.store.get(job_id)).job.state in (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED)

    await wait_for(ended, timeout=20)
    return (await s.store.get(job_id)).job


@pytest.mark.parametrize("crash", [False, True], ids=["restart", "kill-9"])
def test_acknowledged_jobs_survive_a_redis_restart(crash: bool) -> None:
    async def go(server: RedisServer) -> None:
        async with stack(server.url, dispatcher=False) as s:
            ids = [(await s.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=echo_spec(f"job {i} words")),
                                           metadata=md())).job.id for i in range(5)]
            if crash:
                time.sleep(1.2)  # appendfsync everysec: what is a second old is on disk
                server.kill()
                server.start()
            else:
                server.restart()
            for jid in ids:  # every acknowledged job is still there, queued
                job = (await s.jobs.GetJob(jobs_pb2.GetJobRequest(job_id=jid), metadata=md(), timeout=10)).job
                assert job.state == jobs_pb2.JOB_STATE_QUEUED
            # ...and runs to the end once a dispatcher is up (its consumer group survived as well).
            d = Dispatcher(s.store, WorkerClient(f"127.0.0.1:{s.worker_port}", "text"), s.gateway.cfg.dispatcher,
                           Metrics())
            task = asyncio.create_task(d.run())
            try:
                for i, jid in enumerate(ids):
                    assert (await _final(s, jid)).result.text.text == f"job {i} words"
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    with RedisServer() as server:
        asyncio.run(go(server))


def test_health_follows_the_job_store_and_queue_gauges_go_stale() -> None:
    async def go(server: RedisServer) -> None:
        async with stack(server.url) as s:
            health = health_pb2_grpc.HealthStub(s.channel)

            async def status(service: str = "") -> int:
                return (await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)).status

            def depth_series() -> int:
                return sum(len(m.samples) for m in s.gateway.metrics.queue_depth.collect())

            await wait_for(lambda: depth_series() > 0, timeout=10)
            assert await status() == health_pb2.HealthCheckResponse.SERVING
            server.stop()
            await wait_for(lambda: _is(status(), health_pb2.HealthCheckResponse.NOT_SERVING), timeout=10)
            assert await status("tessera.v1.TextGenerationService") == health_pb2.HealthCheckResponse.NOT_SERVING
            assert await status("tessera.liveness") == health_pb2.HealthCheckResponse.SERVING  # no restart for it
            assert depth_series() == 0  # removed, not frozen at the last value
            assert s.gateway.metrics.redis_up.collect()[0].samples[0].value == 0
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.text.Generate(_gen("a b"), metadata=md(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.UNAVAILABLE
            assert str(server.port) not in ei.value.details() and "redis://" not in ei.value.details()
            server.start()
            await wait_for(lambda: _is(status(), health_pb2.HealthCheckResponse.SERVING), timeout=15)
            await wait_for(lambda: depth_series() > 0, timeout=10)

    with RedisServer() as server:
        asyncio.run(go(server))


async def _is(value, want) -> bool:
    return await value == want


def test_a_dead_dispatchers_jobs_resume_under_full_load(redis_server) -> None:
    """Intake must not starve reclaim: with a survivor's window always refilled by new jobs, the dead
    dispatcher's jobs still resume within claim_idle_ms + one reclaim period (+ one job's time)."""
    async def go() -> None:
        async with stack(redis_server.url, delay_s=0.05, dispatcher=False) as s:
            cfg = DispatcherConfig(worker_address=f"127.0.0.1:{s.worker_port}", max_in_flight=2,
                                   claim_idle_ms=1500, heartbeat_ms=300)
            store = s.store
            await store.ensure_group("text")
            orphans = [(await s.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=echo_spec("o p q r s")),
                                               metadata=md())).job.id for _ in range(2)]
            # A dispatcher takes both and dies at once: pending in its name, never heartbeated again.
            taken = await store.read_queue("text", "dead-dispatcher", 2, 100)
            assert sorted(f[b"job_id"].decode() for _, f in taken) == sorted(orphans)
            died_at = time.monotonic()

            async def feed() -> None:  # keep the queue deep: every free slot could go to a new job
                while True:
                    for _ in range(4):
                        await s.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=echo_spec("n " * 8)), metadata=md())
                    await asyncio.sleep(0.2)

            feeder = asyncio.create_task(feed())
            survivor = Dispatcher(store, WorkerClient(cfg.worker_address, "text"), cfg, Metrics())
            task = asyncio.create_task(survivor.run())
            try:
                for jid in orphans:
                    assert (await _final(s, jid)).result.text.text == "o p q r s"
                took = time.monotonic() - died_at
                # claim_idle 1.5 s + reclaim period 0.5 s + a running job's ~0.5 s, with slack for a busy box
                assert took < 1.5 + 0.5 + 2.5, f"orphaned jobs took {took:.1f}s to finish"
                assert (await store.queue_stats("text"))[0] > 0  # new jobs were still waiting all along
            finally:
                feeder.cancel()
                task.cancel()
                await asyncio.gather(feeder, task, return_exceptions=True)
    asyncio.run(go())


def test_watch_resumes_from_the_last_or_a_future_event_at_once(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url) as s:
            resp = await s.text.Generate(_gen("a b c"), metadata=md(), timeout=10)
            events = [e async for e in s.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=resp.job_id), metadata=md())]
            last = events[-1].event
            assert last.WhichOneof("kind") == "result"
            ms, seq = last.event_id.split("-")
            for after in (last.event_id, f"{ms}-{int(seq) + 5}", f"{int(ms) + 10**6}-0"):
                t0 = time.monotonic()
                again = [e async for e in s.jobs.WatchJob(jobs_pb2.WatchJobRequest(
                    job_id=resp.job_id, after_event_id=after), metadata=md(), timeout=10)]
                assert time.monotonic() - t0 < 2  # not held until the deadline
                assert [e.event.WhichOneof("kind") for e in again] == ["result"]
                assert again[0].event.event_id == last.event_id and again[0].event.result.text.text == "a b c"
    asyncio.run(go())


def test_watch_past_a_running_jobs_last_event_is_out_of_range(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url, dispatcher=False) as s:
            job = (await s.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=echo_spec("a b")), metadata=md())).job
            (last_id, _), = await s.store.r.xrange(s.store.events_key(job.id))  # QUEUED: its only event so far
            ms = int(last_id.decode().split("-")[0])
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                _ = [e async for e in s.jobs.WatchJob(jobs_pb2.WatchJobRequest(
                    job_id=job.id, after_event_id=f"{ms + 10**6}-0"), metadata=md(), timeout=5)]
            assert ei.value.code() == grpc.StatusCode.OUT_OF_RANGE
            assert "after_event_id" in ei.value.details()
    asyncio.run(go())


def test_a_stream_whose_job_vanishes_ends_with_not_found(redis_server) -> None:
    """A job gone from the store mid-stream (expired, or lost with Redis's data) ends GenerateStream and
    WatchJob with NOT_FOUND, as it ends Generate: a stream that ended OK without the job's result or
    error read as a success to a plain gRPC client (found with python -m loadtest.chaos --sabotage drop-jobs)."""
    async def go() -> None:
        async with stack(redis_server.url, dispatcher=False) as s:  # no dispatcher: the jobs stay queued
            stream = s.text.GenerateStream(text_pb2.GenerateStreamRequest(request=text_pb2.TextRequest(
                model="echo", prompt="a b")), metadata=md(), timeout=20)
            streamed = (await stream.read()).job_id  # the job id comes first
            job = (await s.jobs.SubmitJob(jobs_pb2.SubmitJobRequest(spec=echo_spec("c d")), metadata=md())).job
            watch = s.jobs.WatchJob(jobs_pb2.WatchJobRequest(job_id=job.id), metadata=md(), timeout=20)
            assert (await watch.read()).event.state == jobs_pb2.JOB_STATE_QUEUED
            for jid in (streamed, job.id):
                await s.store.r.delete(s.store.job_key(jid), s.store.events_key(jid))
            for call in (stream, watch):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    while await call.read() is not grpc.aio.EOF:
                        pass
                assert ei.value.code() == grpc.StatusCode.NOT_FOUND and "expired" in ei.value.details()
    asyncio.run(go())


def test_worker_failures_are_classified_and_the_job_error_carries_the_cause(redis_server, caplog) -> None:
    async def go() -> None:
        async with stack(redis_server.url, max_attempts=2, retry_backoff_ms=50) as s:
            # The engine failed on this request: no retry, the caller gets the worker's reason at once.
            t0 = time.monotonic()
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.text.Generate(_gen("!modelfail:ValueError: probabilities contain nan"), metadata=md(),
                                      timeout=20)
            assert time.monotonic() - t0 < 5
            assert ei.value.code() == grpc.StatusCode.INTERNAL
            assert "probabilities contain nan" in ei.value.details() and "tessera worker" not in ei.value.details()
            assert s.worker.started.count(s.worker.started[-1]) == 1  # one attempt only
            # A replica dying is worth retries; when they run out, the job's error says why (no address).
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.text.Generate(_gen("!crash:segfault"), metadata=md(), timeout=30)
            assert ei.value.code() == grpc.StatusCode.ABORTED
            details = ei.value.details()
            assert "after 2 dispatch attempts" in details and "segfault" in details and "INTERNAL" in details
            assert "10.0.0.7" not in details and "<internal>" in details
            # The retry was dispatched as soon as it was queued, not left pending for a reclaim to find.
            assert "reclaimed" not in caplog.text
    asyncio.run(go())


def test_degenerate_sampling_params_are_refused_before_enqueueing(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url) as s:
            before = await s.store.r.xlen(s.store.queue_key("text"))
            for t in (1e-38, 0.005, float("inf"), 11.0):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await s.text.Generate(_gen("a b", temperature=t), metadata=md(), timeout=10)
                assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert "request.params.temperature" in ei.value.details()
            assert await s.store.r.xlen(s.store.queue_key("text")) == before
            assert (await s.text.Generate(_gen("a b", temperature=0.01), metadata=md(), timeout=10)).result.text
    asyncio.run(go())


def test_prompts_too_long_in_tokens_are_refused_before_enqueueing_and_models_are_listed(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url) as s:
            await wait_for(lambda: s.gateway.catalog.text_model("echo") is not None, timeout=10)
            listed = await models_pb2_grpc.ModelServiceStub(s.channel).ListModels(
                models_pb2.ListModelsRequest(), metadata=md(), timeout=5)
            echo = next(m for m in listed.models if m.name == "echo")
            assert echo.ready and echo.is_default and echo.kinds == ["text"]
            assert echo.max_positions == ECHO_POSITIONS
            assert echo.max_prompt_tokens == ECHO_POSITIONS - 1 - ECHO_PROMPT_OVERHEAD
            other = next(m for m in listed.models if m.name == "other")
            assert not other.ready and other.max_positions == 0  # configured, never described
            jobs_before = await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md())
            # A prompt far from the limit (fewer bytes than positions) is not counted: no worker call.
            assert (await s.text.Generate(_gen("a b c", max_tokens=8), metadata=md(), timeout=20)).result.text
            assert s.worker.counted == 0
            fits = " ".join(["w"] * (ECHO_POSITIONS - ECHO_PROMPT_OVERHEAD - 8))
            assert (await s.text.Generate(_gen(fits, max_tokens=8), metadata=md(), timeout=20)).result.text
            with pytest.raises(grpc.aio.AioRpcError) as ei:  # one token more than the positions hold
                await s.text.Generate(_gen(fits + " w", max_tokens=8), metadata=md(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"needs {ECHO_POSITIONS + 1} positions" in ei.value.details()
            assert s.worker.counted == 2  # the two near the limit were counted by the worker
            jobs_after = await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(), metadata=md())
            assert len(jobs_after.jobs) == len(jobs_before.jobs) + 2  # the refused one has no record
    asyncio.run(go())


def test_a_raw_prompt_reaches_the_worker_and_may_use_the_template_s_positions(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url) as s:
            await wait_for(lambda: s.gateway.catalog.text_model("echo") is not None, timeout=10)
            # ECHO_PROMPT_OVERHEAD words more than a formatted prompt may have: they fit only as is.
            words = " ".join(["w"] * (ECHO_POSITIONS - 8))
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.text.Generate(_gen(words, max_tokens=8), metadata=md(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            raw = await s.text.Generate(_gen(words, max_tokens=8, raw_prompt=True), metadata=md(), timeout=20)
            assert raw.result.text == " ".join(["w"] * 8)
            plain = await s.text.Generate(_gen("a b", max_tokens=2), metadata=md(), timeout=20)
            # The flag went through the job store and the dispatcher to the worker's request.
            assert s.worker.raw_prompts == {raw.job_id: True, plain.job_id: False}
            with pytest.raises(grpc.aio.AioRpcError) as ei:  # one word more than the positions hold, even raw
                await s.text.Generate(_gen(words + " w", max_tokens=8, raw_prompt=True), metadata=md(), timeout=10)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert "as a raw prompt" in ei.value.details()
            assert f"needs {ECHO_POSITIONS + 1} positions" in ei.value.details()
            assert s.worker.counted == 3  # all near the limit: counted by the worker, raw ones as raw
    asyncio.run(go())


def test_malformed_requests_are_invalid_argument_with_bounded_details(redis_server) -> None:
    async def go() -> None:
        async with stack(redis_server.url) as s:
            raw = s.channel.unary_unary("/tessera.v1.TextGenerationService/Generate")
            raw_stream = s.channel.unary_stream("/tessera.v1.TextGenerationService/GenerateStream")
            bad_utf8 = b"\x0a\x06\x12\x04\xff\xfe\xfd\xfc"  # request { prompt: <invalid UTF-8> }
            for call in (raw(b"\xff\xff\xff garbage", metadata=md(), timeout=5),
                         raw(bad_utf8, metadata=md(), timeout=5)):
                with pytest.raises(grpc.aio.AioRpcError) as ei:
                    await call
                assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT, ei.value.details()
                assert dict(ei.value.trailing_metadata()).get("x-request-id")
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                _ = [m async for m in raw_stream(bad_utf8, metadata=md(), timeout=5)]
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_token=str(10**40)), metadata=md(), timeout=5)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                _ = [e async for e in s.jobs.WatchJob(jobs_pb2.WatchJobRequest(
                    job_id="0" * 24, after_event_id=f"{10**40}-0"), metadata=md(), timeout=5)]
            assert ei.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND)
            huge = text_pb2.GenerateRequest(request=text_pb2.TextRequest(model="m" * 10_000, prompt="a"))
            with pytest.raises(grpc.aio.AioRpcError) as ei:
                await s.text.Generate(huge, metadata=md(), timeout=5)
            assert ei.value.code() == grpc.StatusCode.INVALID_ARGUMENT  # not RESOURCE_EXHAUSTED by its trailers
            assert len(ei.value.details()) <= 1024
            trailers = dict(ei.value.trailing_metadata())
            assert sum(len(v) for v in trailers.values()) < 4096
            # Every response names its request: errors in the trailers, successes in the headers too.
            call = s.text.Generate(_gen("a b"), metadata=(*md(), ("x-request-id", "support-ticket-1234")))
            await call
            assert dict(await call.initial_metadata())["x-request-id"] == "support-ticket-1234"
            job = (await s.jobs.ListJobs(jobs_pb2.ListJobsRequest(page_size=1), metadata=md())).jobs[0]
            assert (await s.store.get(job.id)).request_id == "support-ticket-1234"
    asyncio.run(go())
