"""Scripted Tessera servicers behind a real in-process gRPC server (see conftest.py for the fixtures).

Behaviour is chosen by the prompt, so the same server serves the sync client, the async client and the
CLI running in a subprocess:
    "bad"          INVALID_ARGUMENT with BadRequest + ErrorInfo details and an x-request-id trailer
    "flaky:N"      UNAVAILABLE for the first N attempts of an idempotency key, then success
    "slow"         answers after 5 s (or when the client gives up)
    "ratelimit"    RESOURCE_EXHAUSTED with RetryInfo(1.5 s)
    "midstream"    (stream) one chunk, then UNAVAILABLE
    "slowstream"   (stream) one chunk, then 5 s of silence (or until cancelled)
    anything else  3 chunks "The answer", " is", " 5." then the result
Every call must carry `authorization: Bearer test-key` and a non-empty idempotency key.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent import futures
from dataclasses import dataclass, field

import grpc
from google.protobuf import duration_pb2, message, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

from tessera.v1 import common_pb2, jobs_pb2, jobs_pb2_grpc, text_pb2, text_pb2_grpc

API_KEY = "test-key"
CHUNKS = ("The answer", " is", " 5.")
REQUEST_ID = "req-42"
SLOW_S = 5.0


class _RichStatus(collections.namedtuple("_RichStatus", ("code", "details", "trailing_metadata")), grpc.Status):
    pass


def abort(context: grpc.ServicerContext, code: grpc.StatusCode, msg: str,
          details: Sequence[message.Message] = ()) -> None:
    """Abort the way the gateway does: google.rpc.Status in the trailer, plus a request id."""
    status = status_pb2.Status(code=code.value[0], message=msg)
    for d in details:
        status.details.add().Pack(d)
    context.abort_with_status(_RichStatus(code, msg, (("grpc-status-details-bin", status.SerializeToString()),
                                                      ("x-request-id", REQUEST_ID))))


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
    cancelled_jobs: list[str] = field(default_factory=list)
    stream_cancelled: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self, context: grpc.ServicerContext, request: message.Message, key: str | None) -> None:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        with self.lock:
            self.requests.append(request)
            self.metadata.append(md)
            if key:
                self.attempts[key] += 1
        if md.get("authorization") != f"Bearer {API_KEY}":
            abort(context, grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key")
        if key is not None and not key:
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "idempotency key required",
                  [error_details_pb2.BadRequest(field_violations=[{"field": "idempotency_key",
                                                                   "description": "must not be empty"}])])


def _result(text: str, reason: int = common_pb2.FINISH_REASON_STOP) -> text_pb2.TextResult:
    usage = text_pb2.TextUsage(prompt_tokens=7, completion_tokens=6, forward_passes=4, tokens_per_forward=1.5,
                               time_to_first_chunk_s=0.25, total_s=1.0, queue_s=0.125)
    return text_pb2.TextResult(text=text, finish_reason=reason, usage=usage, model="d2f-test")


class TextServicer(text_pb2_grpc.TextGenerationServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec

    def _script(self, request: text_pb2.GenerateRequest | text_pb2.GenerateStreamRequest,
                context: grpc.ServicerContext) -> None:
        self.rec.check(context, request, request.idempotency_key)
        prompt = request.request.prompt
        if prompt == "bad":
            abort(context, grpc.StatusCode.INVALID_ARGUMENT, "invalid request", [
                error_details_pb2.BadRequest(field_violations=[
                    {"field": "request.params.temperature", "description": "must be in [0, 10]"},
                    {"field": "request.prompt", "description": "must not be 'bad'"}]),
                error_details_pb2.ErrorInfo(reason="INVALID_REQUEST", domain="tessera.ai")])
        if prompt.startswith("flaky:") and self.rec.attempts[request.idempotency_key] <= int(prompt[6:]):
            abort(context, grpc.StatusCode.UNAVAILABLE, "gateway draining", [retry_info(0.1)])
        if prompt == "ratelimit":
            abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "rate limit exceeded", [retry_info(1.5)])
        if prompt == "slow":
            _wait_while_active(context, SLOW_S)

    def Generate(self, request: text_pb2.GenerateRequest, context: grpc.ServicerContext) -> text_pb2.GenerateResponse:
        self._script(request, context)
        return text_pb2.GenerateResponse(job_id=f"job-{request.idempotency_key[:8]}", result=_result("".join(CHUNKS)))

    def GenerateStream(self, request: text_pb2.GenerateStreamRequest,
                       context: grpc.ServicerContext) -> Iterator[text_pb2.GenerateStreamResponse]:
        self._script(request, context)
        job_id, prompt = f"job-{request.idempotency_key[:8]}", request.request.prompt
        context.add_callback(self.rec.stream_cancelled.set)
        yield text_pb2.GenerateStreamResponse(job_id=job_id, event_id="1-0")
        total = 0
        for i, text in enumerate(CHUNKS):
            total += 2
            chunk = text_pb2.TextChunk(text=text, token_count=2, total_tokens=total)
            yield text_pb2.GenerateStreamResponse(job_id=job_id, event_id=f"{i + 2}-0", chunk=chunk)
            if prompt == "midstream":
                abort(context, grpc.StatusCode.UNAVAILABLE, "worker lost", [retry_info(0.5)])
            if prompt == "slowstream":
                _wait_while_active(context, SLOW_S)
        yield text_pb2.GenerateStreamResponse(job_id=job_id, event_id="5-0", result=_result("".join(CHUNKS)))


class JobServicer(jobs_pb2_grpc.JobServiceServicer):
    def __init__(self, rec: Recorder) -> None:
        self.rec = rec
        self.jobs: dict[str, jobs_pb2.Job] = {}
        self.by_key: dict[str, str] = {}

    def _job(self, job_id: str, context: grpc.ServicerContext) -> jobs_pb2.Job:
        if job_id not in self.jobs:
            abort(context, grpc.StatusCode.NOT_FOUND, f"job {job_id!r} not found",
                  [error_details_pb2.ResourceInfo(resource_type="tessera.v1.Job", resource_name=job_id)])
        return self.jobs[job_id]

    def SubmitJob(self, request: jobs_pb2.SubmitJobRequest,
                  context: grpc.ServicerContext) -> jobs_pb2.SubmitJobResponse:
        self.rec.check(context, request, request.idempotency_key)
        if request.idempotency_key in self.by_key:
            return jobs_pb2.SubmitJobResponse(job=self.jobs[self.by_key[request.idempotency_key]], created=False)
        now = timestamp_pb2.Timestamp()
        now.GetCurrentTime()
        job = jobs_pb2.Job(id=f"job-{len(self.jobs) + 1}", state=jobs_pb2.JOB_STATE_QUEUED, spec=request.spec,
                           create_time=now, update_time=now, idempotency_key=request.idempotency_key)
        self.jobs[job.id] = job
        self.by_key[request.idempotency_key] = job.id
        return jobs_pb2.SubmitJobResponse(job=job, created=True)

    def GetJob(self, request: jobs_pb2.GetJobRequest, context: grpc.ServicerContext) -> jobs_pb2.GetJobResponse:
        self.rec.check(context, request, None)
        return jobs_pb2.GetJobResponse(job=self._job(request.job_id, context))

    def WatchJob(self, request: jobs_pb2.WatchJobRequest,
                 context: grpc.ServicerContext) -> Iterator[jobs_pb2.WatchJobResponse]:
        self.rec.check(context, request, None)
        self._job(request.job_id, context)
        events = [jobs_pb2.JobEvent(state=jobs_pb2.JOB_STATE_RUNNING)]
        events += [jobs_pb2.JobEvent(text_chunk=text_pb2.TextChunk(text=t, token_count=2)) for t in CHUNKS]
        events += [jobs_pb2.JobEvent(result=jobs_pb2.JobResult(text=_result("".join(CHUNKS)))),
                   jobs_pb2.JobEvent(state=jobs_pb2.JOB_STATE_SUCCEEDED)]
        after = int(request.after_event_id or 0)
        for i, event in enumerate(events, start=1):
            if i > after:
                event.event_id = str(i)
                yield jobs_pb2.WatchJobResponse(job_id=request.job_id, event=event)

    def CancelJob(self, request: jobs_pb2.CancelJobRequest,
                  context: grpc.ServicerContext) -> jobs_pb2.CancelJobResponse:
        self.rec.check(context, request, None)
        with self.rec.lock:
            self.rec.cancelled_jobs.append(request.job_id)
        if request.job_id.startswith("job-") and request.job_id not in self.jobs:  # streamed jobs
            return jobs_pb2.CancelJobResponse(job=jobs_pb2.Job(id=request.job_id, state=jobs_pb2.JOB_STATE_CANCELLED))
        job = self._job(request.job_id, context)
        job.state = jobs_pb2.JOB_STATE_CANCELLED
        return jobs_pb2.CancelJobResponse(job=job)

    def ListJobs(self, request: jobs_pb2.ListJobsRequest, context: grpc.ServicerContext) -> jobs_pb2.ListJobsResponse:
        self.rec.check(context, request, None)
        newest_first = list(reversed(self.jobs.values()))
        start, size = int(request.page_token or 0), request.page_size or 20
        page = newest_first[start:start + size]
        more = start + size < len(newest_first)
        return jobs_pb2.ListJobsResponse(jobs=page, next_page_token=str(start + size) if more else "")


@dataclass
class FakeGateway:
    address: str
    rec: Recorder
    jobs: JobServicer


def start(max_workers: int = 16) -> tuple[grpc.Server, str, TextServicer, JobServicer]:
    """Start a server on a free 127.0.0.1 port (port 0: parallel test runs never collide)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers))
    rec = Recorder()
    text, jobs = TextServicer(rec), JobServicer(rec)
    text_pb2_grpc.add_TextGenerationServiceServicer_to_server(text, server)
    jobs_pb2_grpc.add_JobServiceServicer_to_server(jobs, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}", text, jobs
