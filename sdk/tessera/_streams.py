"""What the sync and async streams share: message bookkeeping, request ids, and resuming after a failure.

A stream that fails with a retryable error is re-opened in place, so its user sees every chunk exactly
once and the final result as if nothing happened. Before any message the original request is sent again
(same idempotency key: the gateway attaches it to the job the first attempt created); once the job id is
known, the rest of the job comes from `JobService.WatchJob` after the last event received, and
its JobEvents are turned into the same items the original stream yields.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

import grpc

from tessera._retry import Retrier
from tessera.errors import from_status
from tessera.types import (
    ImageProgress,
    ImageResult,
    TextChunk,
    TextResult,
    chunk_from_proto,
    image_progress_from_proto,
    image_result_from_proto,
    result_from_proto,
    understanding_result_from_proto,
)
from tessera.v1 import jobs_pb2, understanding_pb2

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

# (resume request or None for the original request, timeout) -> a started call (sync or grpc.aio).
Opener = Callable[[jobs_pb2.WatchJobRequest | None, float], Any]


def opener(method: Callable[..., Any], watch: Callable[..., Any], request: Any,
           metadata: Sequence[tuple[str, str]]) -> Opener:
    """How a stream (re)opens: `method(request)` at first, `watch(resume)` once the job is known."""
    def open_call(resume: jobs_pb2.WatchJobRequest | None, timeout: float) -> Any:
        if resume is None:
            return method(request, timeout=timeout, metadata=metadata)
        return watch(resume, timeout=timeout, metadata=metadata)
    return open_call


class StreamState(Generic[_Item, _Result]):
    """What a stream remembers across messages and re-opens: job id, resume point, result, request id.

    `feed` turns one message, of the original call or of a WatchJob resume, into the item it carries.
    """

    def __init__(self) -> None:
        self.job_id = ""
        self.last_event_id = ""
        self.request_id = ""
        self.result: _Result | None = None
        # The job's result (or error) arrived: a failure after it loses nothing and is not worth raising.
        self.finished = False

    def resume_request(self) -> jobs_pb2.WatchJobRequest | None:
        """Where to re-open: None (re-send the original) until the job id is known, else WatchJob."""
        if not self.job_id:
            return None
        return jobs_pb2.WatchJobRequest(job_id=self.job_id, after_event_id=self.last_event_id)

    def feed(self, msg: Any) -> _Item | None:
        """Record one message; return the item it carries, if any."""
        self.job_id = msg.job_id or self.job_id
        if isinstance(msg, jobs_pb2.WatchJobResponse):
            self.last_event_id = msg.event.event_id or self.last_event_id
            return self._event(msg.event)
        kind = msg.WhichOneof("payload")
        if kind is not None:
            # Only payloads move the resume point: the gateway announces the job with the id of its
            # first event, which can be a chunk it sends right after; resuming after it would lose that chunk.
            self.last_event_id = msg.event_id or self.last_event_id
        if kind == "result":
            self.result, self.finished = self._result(msg), True
            return None
        return self._payload(kind, msg)

    def _event(self, event: jobs_pb2.JobEvent) -> _Item | None:
        kind = event.WhichOneof("kind")
        if kind == "error":
            # The original stream would have ended with this status; a resumed one raises the same error.
            self.finished = True
            raise from_status(event.error, self.request_id or None)
        if kind == "result":
            self.result, self.finished = self._job_result(event.result), True
            return None
        return self._event_item(event)

    def _payload(self, kind: str | None, msg: Any) -> _Item | None:
        raise NotImplementedError

    def _result(self, msg: Any) -> _Result:
        raise NotImplementedError

    def _event_item(self, event: jobs_pb2.JobEvent) -> _Item | None:
        raise NotImplementedError

    def _job_result(self, result: jobs_pb2.JobResult) -> _Result:
        raise NotImplementedError


class TextStreamState(StreamState[TextChunk, TextResult]):
    """GenerateStream / Understand messages (and text JobEvents) as TextChunks and a TextResult."""

    def _payload(self, kind: str | None, msg: Any) -> TextChunk | None:
        return chunk_from_proto(msg.chunk, self.job_id, msg.event_id) if kind == "chunk" else None

    def _result(self, msg: Any) -> TextResult:
        if isinstance(msg, understanding_pb2.UnderstandResponse):
            return understanding_result_from_proto(msg.result, self.job_id, self.request_id)
        return result_from_proto(msg.result, self.job_id, self.request_id)

    def _event_item(self, event: jobs_pb2.JobEvent) -> TextChunk | None:
        if event.WhichOneof("kind") != "text_chunk":
            return None
        return chunk_from_proto(event.text_chunk, self.job_id, event.event_id)

    def _job_result(self, result: jobs_pb2.JobResult) -> TextResult:
        if result.WhichOneof("kind") == "understand":
            return understanding_result_from_proto(result.understand, self.job_id, self.request_id)
        return result_from_proto(result.text, self.job_id, self.request_id)


class ImageStreamState(StreamState[ImageProgress, ImageResult]):
    """GenerateImage / EditImage messages (and image JobEvents) as ImageProgress and an ImageResult."""

    def _payload(self, kind: str | None, msg: Any) -> ImageProgress | None:
        return image_progress_from_proto(msg.progress, self.job_id, msg.event_id) if kind == "progress" else None

    def _result(self, msg: Any) -> ImageResult:
        return image_result_from_proto(msg.result, self.job_id, self.request_id)

    def _event_item(self, event: jobs_pb2.JobEvent) -> ImageProgress | None:
        if event.WhichOneof("kind") != "image_progress":
            return None
        return image_progress_from_proto(event.image_progress, self.job_id, event.event_id)

    def _job_result(self, result: jobs_pb2.JobResult) -> ImageResult:
        return image_result_from_proto(result.image, self.job_id, self.request_id)


class WatchState(StreamState[jobs_pb2.JobEvent, None]):
    """`watch_job`: every JobEvent is the item, errors included (they are the job's, not the call's)."""

    def _event(self, event: jobs_pb2.JobEvent) -> jobs_pb2.JobEvent:
        self.finished = self.finished or event.WhichOneof("kind") in ("result", "error")
        return event


class StreamCore(Generic[_Item]):
    """The I/O-free half of a sync or async stream: how it (re)opens, what a failure means, and the
    ids it exposes. Subclasses read messages and sleep, each in its own way."""

    _state: StreamState[_Item, Any]
    _open_call: Opener
    _retrier: Retrier

    def _setup(self, state: StreamState[_Item, Any], open_call: Opener, retrier: Retrier) -> None:
        self._state, self._open_call, self._retrier = state, open_call, retrier

    def _open(self) -> Any:
        return self._open_call(self._state.resume_request(), self._retrier.timeout())

    def _retry_delay(self, e: grpc.RpcError) -> float | None:
        """Seconds to wait before re-opening after `e`; None when the stream already has everything.

        Raises the TesseraError for `e` when it is not retried."""
        if self._state.finished:
            return None
        return self._retrier.delay_or_raise(e)

    def _received(self, msg: Any, request_id: str) -> _Item | None:
        self._retrier.progressed()
        self._state.request_id = request_id or self._state.request_id
        return self._state.feed(msg)

    def _ended(self, request_id: str) -> None:
        self._state.request_id = self._state.request_id or request_id

    @property
    def job_id(self) -> str:
        """Id of the job behind the stream ("" until the first message arrived)."""
        return self._state.job_id

    @property
    def last_event_id(self) -> str:
        """Event id of the last event received: `watch_job(job_id, after_event_id=...)` resumes there."""
        return self._state.last_event_id

    @property
    def request_id(self) -> str:
        """The gateway's x-request-id of the call now delivering messages ("" until the first message)."""
        return self._state.request_id


class ResultView(Generic[_Result]):
    """`.result` of a stream whose job produces one."""

    _state: StreamState[Any, _Result]

    @property
    def result(self) -> _Result | None:
        """The final result once the stream finished; None before that or if it was cancelled."""
        return self._state.result


def is_cancelled(e: grpc.RpcError) -> bool:
    """Whether an RpcError is the CANCELLED status our own `cancel()` produces."""
    return hasattr(e, "code") and e.code() == grpc.StatusCode.CANCELLED
