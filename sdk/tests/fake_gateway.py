"""Scripted Tessera servicers behind a real in-process gRPC server (see conftest.py for the fixtures).

Behaviour is chosen by the prompt, so the same server serves the sync client, the async client and the
CLI running in a subprocess:
    "bad"          INVALID_ARGUMENT with BadRequest + ErrorInfo details
    "flaky:N"      UNAVAILABLE (RetryInfo 0.1 s) for the first N attempts of an idempotency key, then success
    "hang:N"       the first N attempts of a key hang until cancelled (e.g. the server stops), then success
    "slow"         answers after 5 s (or when the client gives up)
    "ratelimit"    RESOURCE_EXHAUSTED with RetryInfo(1.5 s), every time
    "ratelimit:N"  RESOURCE_EXHAUSTED with RetryInfo(RATE_LIMIT_DELAY_S) for the first N attempts of a key
    "quota"        RESOURCE_EXHAUSTED without RetryInfo
    "midstream"    (stream) one chunk, then UNAVAILABLE; the job goes on (WatchJob has the rest)
    "slowstream"   (stream) one chunk, then 5 s of silence (or until cancelled)
    "long"         (stream) LONG_CHUNKS chunks of 100 characters, for closed-pipe tests
    "fail"         (job) WatchJob ends with an INTERNAL error event; the job is FAILED afterwards
    anything else  3 chunks "The answer", " is", " 5." then the result
Every call must carry `authorization: Bearer test-key` and submissions a non-empty idempotency key. Every
response carries `x-request-id: req-N` (N counts the server's calls) in its initial and trailing metadata,
as the gateway does. Streamed and submitted jobs share one store, so WatchJob resumes either; a stream's
event ids ("1-0", ...) are those WatchJob reports for the same job.
"""

from __future__ import annotations

import collections
import itertools
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.protobuf import duration_pb2, message, timestamp_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from tessera.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc, models_pb2, models_pb2_grpc, text_pb2, text_pb2_grpc

API_KEY = "test-key"
CHUNKS = ("The answer", " is", " 5.")
SLOW_S = 5.0
RATE_LIMIT_DELAY_S = 0.3
LONG_CHUNKS = 2000
MODELS = (
    models_pb2.ModelInfo(name="d2f-test", kinds=["text"], is_default=True, ready=True, method="d2f",
                         max_positions=2048, max_tokens=512, default_max_tokens=128, max_prompt_tokens=1500,
                         max_prompt_chars=6000),
    models_pb2.ModelInfo(name="shapes", kinds=["image", "edit", "understand"], is_default=True, ready=True,
                         max_prompt_chars=512),
)


class _RichStatus(collections.namedtuple("_RichStatus", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, msg: str,
          details: Sequence[message.Message] = ()) -> None:
    """Abort the way the gateway does: google.rpc.Status in the trailer, beside the call's request id."""
    status = status_pb2.Status(code=code.value[0], message=msg)
    for d in details:
        status.details.add().Pack(d)
    trailer = (("grpc-status-details-bin", status.SerializeToString()), *(context.trailing_metadata() or ()))
    context.abort_with_status(_RichStatus(code, msg, trailer))


def retry_info(seconds: float) -> error_details_pb2.RetryInfo:
    return error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(seconds),
                                                                         nanos=int(seconds % 1 * 1e9)))


def _wait_while_active(context: grpc.ServicerContext, seconds: float) -> None:
    end = time.monotonic() + seconds
    while context.is_active() and time.monotonic() < end:
        time.sleep(0.02)


@dataclass
class Recorder:
    """What the servicers saw, for assertions."""

    attempts: collections.Counter[str] = field(default_factory=collections.Counter)
    requests: list[message.Message] = field(default_factory=list)
    metadata: list[dict[str, str]] = field(default_factory=list)
    request_ids: list[str] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)
    cancelled_jobs: list[str] = field(default_factory=list)
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    def check(self, context: grpc.ServicerContext, request: message.Message, key: str | None) -> str:
        """Record one call, give it its x-request-id (initial and trailing metadata), check auth and key."""
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            request_id = f"req-{next(self._ids)}"
            self.requests.append(request)
            self.metadata.append(md)
            self.request_ids.append(request_id)
            self.arrivals.append(time.monotonic())
            if key:
                self.attempts[key] += 1
        context.send_initial_metadata((("x-request-id", request_id),))
        context.set_trailing_metadata((("x-request-id", request_id),))
        self.arrived.set()
        if md.get("authorization") != f"Bearer {API_KEY}":
            abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key")
        if key is not None and not key:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "idempotency key required",
                  [error_details_pb2.BadRequest(field_violations=[{"field": "idempotency_key",
                                                                   "description": "must not be empty"}])])
        return request_id

    def of_type(self, cls: type[message.Message]) -> list[message.Message]:
        return [r for r in self.requests if isinstance(r, cls)]


def _result(text: str, reason: int = common_pb2.FINISH_REASON_STOP) -> text_pb2.TextResult:
    usage = text_pb2.TextUsage(prompt_tokens=7, completion_tokens=6, forward_passes=4, tokens_per_forward=1.5,
                               time_to_first_chunk_s=0.25, total_s=1.0, queue_s=0.125)
    return text_pb2.TextResult(text=text, finish_reason=reason, usage=usage, model="d2f-test")


def _now() -> timestamp_pb2.Timestamp:
    now = timestamp_pb2.Timestamp()
    now.GetCurrentTime()
    return now


def _prompt(job: jobs_pb2.Job) -> str:
    return job.spec.text.prompt if job.spec.WhichOneof("kind") == "text" else ""


def job_events(job: jobs_pb2.Job) -> list[jobs_pb2.JobEvent]:
    """A job's whole event stream, in the gateway's order (an end state, then the result or error that
    ends the stream) and with ids "1-0", "2-0", ...: what WatchJob replays and GenerateStream relays."""
    chunks = [f"{i:099d}\n" for i in range(LONG_CHUNKS)] if _prompt(job) == "long" else CHUNKS
    events = [jobs_pb2.JobEvent(state=jobs_pb2.JOB_STATE_RUNNING)]
    if job.state == jobs_pb2.JOB_STATE_CANCELLED:
        cancelled = status_pb2.Status(code=code_pb2.CANCELLED, message="cancelled by its owner")
        events += [jobs_pb2.JobEvent(state=jobs_pb2.JOB_STATE_CANCELLED), jobs_pb2.JobEvent(error=cancelled)]
    elif _prompt(job) == "fail":
        events += [jobs_pb2.JobEvent(text_chunk=text_pb2.TextChunk(text=CHUNKS[0], token_count=2)),
                   jobs_pb2.JobEvent(state=jobs_pb2.JOB_STATE_FAILED),
                   jobs_pb2.JobEvent(error=status_pb2.Status(code=code_pb2.INTERNAL, message="worker crashed"))]
    else:
        events += [jobs_pb2.JobEvent(text_chunk=text_pb2.TextChunk(text=t, token_count=2, total_tokens=2 * i))
                   for i, t in enumerate(chunks, start=1)]
        events += [jobs_pb2.JobEvent(state=jobs_pb2.JOB_STATE_SUCCEEDED),
                   jobs_pb2.JobEvent(result=jobs_pb2.JobResult(text=_result("".join(chunks))))]
    for i, event in enumerate(events, start=1):
        event.event_id = f"{i}-0"
    return events


class JobStore:
    """Jobs by id and idempotency key: submissions and streams with the same key share a job."""

    def __init__(self) -> None:
        self.jobs: dict[str, jobs_pb2.Job] = {}
        self.by_key: dict[str, str] = {}
        self.lock = threading.Lock()

    def add(self, spec: jobs_pb2.JobSpec, key: str, job_id: str = "") -> tuple[jobs_pb2.Job, bool]:
        with self.lock:
            if key in self.by_key:
                return self.jobs[self.by_key[key]], False
            job = jobs_pb2.Job(id=job_id or f"job-{len(self.jobs) + 1}", state=jobs_pb2.JOB_STATE_QUEUED, spec=spec,
                               create_time=_now(), update_time=_now(), idempotency_key=key)
            self.jobs[job.id] = job
            self.by_key[key] = job.id
            return job, True

    def clear(self) -> None:
        with self.lock:
            self.jobs.clear()
            self.by_key.clear()


class TextServicer(text_pb2_grpc.TextGenerationServiceServicer):
    def __init__(self, rec: Recorder, store: JobStore) -> None:
        self.rec, self.store = rec, store

    def _script(self, request: text_pb2.GenerateRequest | text_pb2.GenerateStreamRequest,
                context: grpc.ServicerContext) -> jobs_pb2.Job:
        """Run the prompt's script for one attempt; the job the attempt attaches to (same key, same job)."""
        self.rec.check(context, request, request.idempotency_key)
        prompt, attempt = request.request.prompt, self.rec.attempts[request.idempotency_key]
        if prompt == "bad":
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid request", [
                error_details_pb2.BadRequest(field_violations=[
                    {"field": "request.params.temperature", "description": "must be in [0, 10]"},
                    {"field": "request.prompt", "description": "must not be 'bad'"}]),
                error_details_pb2.ErrorInfo(reason="INVALID_REQUEST", domain="tessera.ai")])
        if prompt.startswith("flaky:") and attempt <= int(prompt[6:]):
            abort(context, grpc.StatusCode.UNAVAILABLE, "gateway draining", [retry_info(0.1)])
        if prompt == "ratelimit" or (prompt.startswith("ratelimit:") and attempt <= int(prompt[10:])):
            delay = 1.5 if prompt == "ratelimit" else RATE_LIMIT_DELAY_S
            abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded", [retry_info(delay)])
        if prompt == "quota":
            abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "monthly quota used up")
        if prompt == "slow" or (prompt.startswith("hang:") and attempt <= int(prompt[5:])):
            _wait_while_active(context, SLOW_S if prompt == "slow" else 60)
        key = request.idempotency_key
        job, _ = self.store.add(jobs_pb2.JobSpec(text=request.request), key, f"job-{key[:8]}")
        return job

    def Generate(self, request: text_pb2.GenerateRequest, context: grpc.ServicerContext) -> text_pb2.GenerateResponse:
        job = self._script(request, context)
        return text_pb2.GenerateResponse(job_id=job.id, result=_result("".join(CHUNKS)))

    def GenerateStream(self, request: text_pb2.GenerateStreamRequest,
                       context: grpc.ServicerContext) -> Iterator[text_pb2.GenerateStreamResponse]:
        """Relay the job's events as the gateway does: its id first, then chunks, then the result."""
        job = self._script(request, context)
        prompt = request.request.prompt
        context.add_callback(self.rec.stream_cancelled.set)
        events = job_events(job)
        yield text_pb2.GenerateStreamResponse(job_id=job.id, event_id=events[0].event_id)
        for event in events:
            kind = event.WhichOneof("kind")
            if kind == "text_chunk":
                yield text_pb2.GenerateStreamResponse(job_id=job.id, event_id=event.event_id, chunk=event.text_chunk)
                if prompt == "midstream":
                    abort(context, grpc.StatusCode.UNAVAILABLE, "worker lost", [retry_info(0.05)])
                if prompt == "slowstream":
                    _wait_while_active(context, SLOW_S)
            elif kind == "result":
                yield text_pb2.GenerateStreamResponse(job_id=job.id, event_id=event.event_id, result=event.result.text)
            elif kind == "error":
                abort(context, grpc.StatusCode.INTERNAL, event.error.message)


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, rec: Recorder, store: JobStore) -> None:
        self.rec, self.store = rec, store

    @property
    def jobs(self) -> dict[str, jobs_pb2.Job]:
        return self.store.jobs

    def _job(self, job_id: str, context: grpc.ServicerContext) -> jobs_pb2.Job:
        if job_id not in self.store.jobs:
            abort(context, grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found",
                  [error_details_pb2.ResourceInfo(resource_type="tessera.v1.Job", resource_name=job_id)])
        return self.store.jobs[job_id]

    def SubmitJob(self, request: jobs_pb2.SubmitJobRequest,
                  context: grpc.ServicerContext) -> jobs_pb2.SubmitJobResponse:
        self.rec.check(context, request, request.idempotency_key)
        job, created = self.store.add(request.spec, request.idempotency_key)
        return jobs_pb2.SubmitJobResponse(job=job, created=created)

    def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.GetJobResponse:
        self.rec.check(context, request, None)
        return jobs_pb2.GetJobResponse(job=self._job(request.job_id, context))

    def WatchJob(self, request: jobs_pb2.WatchJobRequest,
                 context: grpc.ServicerContext) -> Iterator[jobs_pb2.WatchJobResponse]:
        self.rec.check(context, request, None)
        job = self._job(request.job_id, context)
        events = job_events(job)
        after = int(request.after_event_id.split("-")[0] or 0)
        if after >= len(events):  # like the gateway: an ended job's final event again, with the last id
            after = len(events) - 1
        for event in events[after:]:
            yield jobs_pb2.WatchJobResponse(job_id=request.job_id, event=event)

    def CancelJob(self, request: jobs_pb2.CancelJobRequest,
                  context: grpc.ServicerContext) -> jobs_pb2.CancelJobResponse:
        self.rec.check(context, request, None)
        with self.rec.lock:
            self.rec.cancelled_jobs.append(request.job_id)
        job = self._job(request.job_id, context)
        job.state = jobs_pb2.JOB_STATE_CANCELLED
        return jobs_pb2.CancelJobResponse(job=job)

    def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext) -> jobs_pb2.ListJobsResponse:
        self.rec.check(context, request, None)
        newest_first = list(reversed(self.store.jobs.values()))
        start, size = int(request.page_token or 0), request.page_size or 20
        page = newest_first[start:start + size]
        more = start + size < len(newest_first)
        return jobs_pb2.ListJobsResponse(jobs=page, next_page_token=str(start + size) if more else "")


class ModelServicer(models_pb2_grpc.ModelServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def ListModels(self, request: models_pb2.ListModelsRequest,
                   context: grpc.ServicerContext) -> models_pb2.ListModelsResponse:
        self.rec.check(context, request, None)
        return models_pb2.ListModelsResponse(models=MODELS)


@dataclass
class Servicers:
    """One fake gateway's state; a restarted server serves the same one."""

    text: TextServicer
    jobs: JobServicer
    models: ModelServicer

    @classmethod
    def new(cls) -> Servicers:
        rec, store = Recorder(), JobStore()
        return cls(TextServicer(rec, store), JobServicer(rec, store), ModelServicer(rec))

    def reset(self) -> Recorder:
        """Fresh recorded state and an empty job store; the recorder now in use."""
        rec = Recorder()
        self.text.rec = self.jobs.rec = self.models.rec = rec
        self.jobs.store.clear()
        return rec


@dataclass
class FakeGateway:
    address: str
    rec: Recorder
    jobs: JobServicer


def serve(parts: Servicers, port: int = 0, max_workers: int = 16) -> tuple[grpc.Server, int]:
    """Start a server for `parts` on 127.0.0.1:`port` (0: a free one, so parallel runs never collide)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    text_pb2_grpc.add_TextGenerationServiceServicer_to_server(parts.text, server)
    jobs_pb2_grpc.add_JobServiceServicer_to_server(parts.jobs, server)
    models_pb2_grpc.add_ModelServiceServicer_to_server(parts.models, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    return server, bound


class RestartableGateway:
    """A fake gateway of its own that a test takes down and brings back on the same port, state intact."""

    def __init__(self) -> None:
        self.parts = Servicers.new()
        self._server, self.port = serve(self.parts)
        self._back: threading.Thread | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def rec(self) -> Recorder:
        return self.parts.text.rec

    def restart(self, down_s: float) -> None:
        """Stop now (in-flight calls fail with UNAVAILABLE, new ones cannot connect); serve again after `down_s`."""
        self._server.stop(grace=None).wait()

        def come_back() -> None:
            time.sleep(down_s)
            # Kept in self._server: a grpc.Server that is garbage collected stops serving.
            self._server, _ = serve(self.parts, self.port)

        self._back = threading.Thread(target=come_back, daemon=True)
        self._back.start()

    def close(self) -> None:
        if self._back is not None:
            self._back.join()
        self._server.stop(grace=None).wait()
