"""One dispatch attempt of a job, per kind of job: forward it to its worker service and turn the worker's
stream into job events and a result.

Every runner returns "ok" or "failed" (the final write also retired the queue entry), "retry" (the
worker was unavailable) or "gone" (cancelled, or reclaimed by another dispatcher: stop writing).
- text / understand: token chunks, resumed after a reclaim with skip_tokens (seeded or greedy
  decoding repeats itself), so a client never sees text twice;
- image / edit: progress (patches done / total, optional preview), then the PNG. A reclaimed attempt
  regenerates the image (same seed: same image) and only reports progress past what was reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from services.common.metrics import Metrics
from services.common.redact import redact
from services.dispatcher.worker_client import WorkerClient, WorkerError
from services.queue.jobstore import JobRecord, JobStore, event_bytes
from services.queue.kinds import JobKind
from tessera.v1 import common_pb2, images_pb2, jobs_pb2, text_pb2, understanding_pb2

_FINISH = {"stop": common_pb2.FINISH_REASON_STOP, "length": common_pb2.FINISH_REASON_LENGTH}


class _ChunkWriter:
    """Appends one attempt's events to the job's event stream without waiting on each write:
    events that arrive while a write is in flight go out together in the next one, and whatever
    is left at the end rides along with the result. A slow model pays one round trip per event;
    a fast one, far fewer.

    `linger_s` (Kafka's linger.ms): a write waits this long after its first event, so events a
    fast worker sends back to back share one write, and a job that ends within it writes all its
    events with its result. It adds at most that much to a watcher's time to first chunk."""

    def __init__(self, store: JobStore, job_id: str, attempt: int, max_tokens: int, linger_s: float = 0.0) -> None:
        self.store, self.job_id, self.attempt, self.max_tokens = store, job_id, attempt, max_tokens
        self.linger_s = linger_s
        self.pending: list[bytes] = []
        self.tokens = 0  # tokens, or image patches, done so far (the job's progress)
        self.lost = False  # the attempt no longer owns the job (cancelled or reclaimed)
        self._closing = False
        self._writing = False
        self._task: asyncio.Task[None] | None = None

    def add(self, event: bytes, tokens: int) -> None:
        if self._task is not None and self._task.done() and self._task.exception() is not None:
            raise self._task.exception()  # type: ignore[misc]
        self.pending.append(event)
        self.tokens = tokens
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        if self.linger_s > 0:
            await asyncio.sleep(self.linger_s)
        while self.pending and not self.lost and not self._closing:
            batch, self.pending = self.pending, []
            self._writing = True
            try:
                ok = await self.store.append_chunks(self.job_id, self.attempt, batch, self.tokens,
                                                    min(1.0, self.tokens / max(1, self.max_tokens)))
            finally:
                self._writing = False
            if not ok:
                self.lost = True

    async def drain(self) -> list[bytes]:
        """Wait for the write in flight (a lingering one is called off); the events not written
        yet, for the final call."""
        self._closing = True
        if self._task is not None and not self._task.done() and not self._writing:
            self._task.cancel()  # still lingering: nothing taken from `pending` yet
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        rest, self.pending = self.pending, []
        return rest

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


@dataclass(slots=True)
class Attempt:
    """One dispatch attempt of one job, and what it needs to report."""

    store: JobStore
    metrics: Metrics
    worker: WorkerClient
    service: str
    job_id: str
    attempt: int
    rec: JobRecord
    timeout: float | None
    entry_id: str
    linger_s: float = 0.0  # see _ChunkWriter
    started: AsyncIterator[Any] | None = None  # the worker call, if the dispatcher already made it
    call_id: str = ""  # the worker call's id, recorded by the claim (new calls carry it)
    error: str = ""  # why a "retry" outcome failed (kept for the job's final error)

    @property
    def created(self) -> float:
        return self.rec.create_ms / 1000

    async def fail(self, code: grpc.StatusCode, message: str) -> None:
        if await self.store.fail(self.job_id, code.value[0], message, attempt=self.attempt,
                                 ack=(self.service, self.entry_id)):
            self.metrics.jobs.labels(self.service, "FAILED").inc()
        else:  # ended meanwhile (e.g. cancelled): the entry is still ours to retire
            await self.store.done(self.service, self.entry_id)

    async def succeed(self, result: jobs_pb2.JobResult, unwritten: list[bytes], tokens: int, model: str) -> bool:
        if not await self.store.succeed(self.job_id, self.attempt, result, ack=(self.service, self.entry_id),
                                        chunk_events=unwritten, tokens=tokens):
            return False
        self.metrics.jobs.labels(self.service, "SUCCEEDED").inc()
        self.metrics.e2e.labels(self.service, model).observe(time.time() - self.created)
        return True

    async def streamed_text(self) -> str:
        """The text earlier attempts already streamed (what a resumed attempt skips)."""
        return "".join(ev.text_chunk.text for ev in await self.store.past_events(self.job_id)
                       if ev.WhichOneof("kind") == "text_chunk")


async def _guarded(a: Attempt, body: Callable[[], Awaitable[str]]) -> str:
    """Worker errors: retry on another attempt when retryable, else fail the job with the worker's status."""
    try:
        return await body()
    except WorkerError as e:
        if e.retryable:
            a.error = f"{e.code.name}: {redact(e.reason)}"
            return "retry"
        await a.fail(e.code, redact(e.reason))
        return "failed"


# ---- text and understanding: token streams ------------------------------------------------------------


async def _run_tokens(a: Attempt, stream: AsyncIterator, model: str, max_tokens: int,
                      make_result: Callable[[str, int, text_pb2.TextUsage, str], jobs_pb2.JobResult]) -> str:
    skip = a.rec.tokens
    total, forwards, prompt_tokens = skip, 0, 0
    text_parts: list[str] = [await a.streamed_text()] if skip else []  # earlier attempts' text is part of it
    dispatched, first_chunk, last_chunk = time.time(), None, None
    finish = common_pb2.FINISH_REASON_UNSPECIFIED
    writer = _ChunkWriter(a.store, a.job_id, a.attempt, max_tokens, a.linger_s)
    try:
        async for msg in stream:
            now = time.time()
            if msg.token_count:
                total += msg.token_count
                text_parts.append(msg.text)
                chunk = text_pb2.TextChunk(text=msg.text, token_count=msg.token_count, total_tokens=total)
                writer.add(event_bytes(text_chunk=chunk), total)
                if writer.lost:
                    return "gone"  # cancelled, or reclaimed by another dispatcher: stop writing
                if first_chunk is None:
                    first_chunk = now
                if last_chunk is None and skip == 0:
                    a.metrics.ttfc.labels(a.service, model).observe(now - a.created)
                elif last_chunk is not None:
                    a.metrics.inter_chunk.labels(a.service, model).observe(now - last_chunk)
                last_chunk = now
            forwards = msg.forward_passes or forwards
            if msg.finished:
                finish = _FINISH.get(msg.finish_reason, common_pb2.FINISH_REASON_UNSPECIFIED)
                prompt_tokens, model = msg.prompt_tokens, msg.model or model
        unwritten = await writer.drain()
    finally:
        writer.close()
    if writer.lost:
        return "gone"
    done, new_tokens = time.time(), total - skip
    usage = text_pb2.TextUsage(prompt_tokens=prompt_tokens, completion_tokens=total, forward_passes=forwards,
                               tokens_per_forward=new_tokens / forwards if forwards else 0.0,
                               time_to_first_chunk_s=(first_chunk or done) - a.created, total_s=done - a.created,
                               queue_s=dispatched - a.created)
    if not await a.succeed(make_result("".join(text_parts), finish, usage, model), unwritten, total, model):
        return "gone"
    a.metrics.tokens.labels(model).inc(new_tokens)
    if forwards:
        a.metrics.tpf.labels(model).observe(new_tokens / forwards)
    return "ok"


async def run_text(a: Attempt) -> str:
    req = a.rec.job.spec.text

    def result(text: str, finish: int, usage: text_pb2.TextUsage, model: str) -> jobs_pb2.JobResult:
        return jobs_pb2.JobResult(text=text_pb2.TextResult(text=text, finish_reason=finish, usage=usage, model=model))

    stream = a.started or a.worker.generate(a.job_id, req, a.rec.tokens, a.timeout, a.call_id)
    return await _guarded(a, lambda: _run_tokens(a, stream, req.model, req.params.max_tokens or 128, result))


async def run_understand(a: Attempt) -> str:
    req = a.rec.job.spec.understand

    def result(text: str, finish: int, usage: text_pb2.TextUsage, model: str) -> jobs_pb2.JobResult:
        return jobs_pb2.JobResult(understand=understanding_pb2.UnderstandingResult(
            text=text, finish_reason=finish, usage=usage, model=model))

    stream = a.worker.understand(a.job_id, req, a.rec.tokens, a.timeout, a.call_id)
    return await _guarded(a, lambda: _run_tokens(a, stream, req.model, req.max_tokens or 16, result))


# ---- image generation and editing ---------------------------------------------------------------------


async def run_image(a: Attempt) -> str:
    spec = a.rec.job.spec
    kind = JobKind.of(spec)
    req = spec.image if kind is JobKind.IMAGE else spec.edit
    stream = (a.worker.generate_image(a.job_id, spec.image, a.timeout, a.call_id) if kind is JobKind.IMAGE
              else a.worker.edit_image(a.job_id, spec.edit, a.timeout, a.call_id))
    return await _guarded(a, lambda: _run_image_stream(a, stream, req.model, kind or JobKind.IMAGE,
                                                       req.params.seed))


async def _run_image_stream(a: Attempt, stream: AsyncIterator, model: str, kind: str, seed: int) -> str:
    reported = a.rec.tokens  # patches an earlier attempt already reported: progress never goes back
    dispatched = time.time()
    writer = _ChunkWriter(a.store, a.job_id, a.attempt, 1, a.linger_s)
    out = None
    try:
        async for msg in stream:
            event = msg.WhichOneof("event")
            if event == "step" and msg.step.patches_done > reported:
                s = msg.step
                writer.max_tokens = s.patches_total
                progress = images_pb2.ImageProgress(patches_done=s.patches_done, patches_total=s.patches_total,
                                                    preview_png=s.preview_png)
                writer.add(event_bytes(image_progress=progress), s.patches_done)
                if writer.lost:
                    return "gone"
            elif event == "output":
                out = msg.output
        unwritten = await writer.drain()
    finally:
        writer.close()
    if writer.lost:
        return "gone"
    if out is None:
        await a.fail(grpc.StatusCode.INTERNAL, "the image worker ended its stream without an image")
        return "failed"
    done = time.time()
    model = out.model or model
    usage = images_pb2.ImageUsage(patches=writer.tokens or reported, steps=out.steps, batch_size=out.batch_size,
                                  generate_s=out.generate_s, total_s=done - a.created, queue_s=dispatched - a.created)
    result = jobs_pb2.JobResult(image=images_pb2.ImageResult(png=out.png, width=out.width, height=out.height,
                                                             model=model, usage=usage, seed=out.seed or seed))
    if not await a.succeed(result, unwritten, usage.patches, model):
        return "gone"
    a.metrics.images.labels(model, kind).inc()
    a.metrics.seconds_per_image.labels(model).observe(out.generate_s / max(1, out.batch_size))
    return "ok"


# One runner per kind of job (services/queue/kinds.py); test_runners checks that none is missing.
RUNNERS: dict[JobKind, Callable[[Attempt], Awaitable[str]]] = {
    JobKind.TEXT: run_text, JobKind.UNDERSTAND: run_understand, JobKind.IMAGE: run_image, JobKind.EDIT: run_image}
