"""Asynchronous Tessera client (grpc.aio): the same API as `tessera.Client`, as coroutines.

Use it from asyncio services that fan out many generations at once; one channel multiplexes them all.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc
import grpc.aio

from tessera import _common
from tessera._common import ClientConfig, ImageInput, ImageParams, TextParams
from tessera._retry import DEFAULT_RETRY_BUDGET_S, Retrier, RetryPolicy
from tessera._streams import (
    ImageStreamState,
    Opener,
    ResultView,
    StreamCore,
    StreamState,
    TextStreamState,
    WatchState,
    is_cancelled,
    opener,
)
from tessera._version import __version__
from tessera.errors import request_id_from
from tessera.types import (
    ImageProgress,
    ImageResult,
    ModelInfo,
    TextChunk,
    TextResult,
    model_info_from_proto,
    result_from_proto,
)
from tessera.v1 import (
    images_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    text_pb2_grpc,
    understanding_pb2_grpc,
)

if TYPE_CHECKING:
    from typing import Unpack

__all__ = ["AsyncClient", "AsyncImageStream", "AsyncJobEventStream", "AsyncTextStream"]

_Item = TypeVar("_Item")
_Stream = TypeVar("_Stream", bound="_AsyncCallStream[Any]")


def _task_cancelling() -> bool:
    """Whether the current task itself is being cancelled (then CancelledError must propagate)."""
    task = asyncio.current_task()
    return task is not None and bool(getattr(task, "cancelling", lambda: 0)())


class _AsyncCallStream(StreamCore[_Item]):
    """Async iterator over a server-streaming call that raises TesseraError, can be cancelled, and
    re-opens itself after a retryable failure (how and where: tessera._streams)."""

    def __init__(self, state: StreamState[_Item, Any], open_call: Opener, retrier: Retrier) -> None:
        self._setup(state, open_call, retrier)
        self._cancelled = False
        # Set by cancel(): a retry's back-off waits on it, so cancelling ends the stream at once.
        self._cancel_event = asyncio.Event()
        self._call = self._open()
        self._call_request_id: str | None = None

    def __aiter__(self: _Stream) -> _Stream:
        return self

    async def __anext__(self) -> _Item:
        while True:
            out = await self._read()
            if out is not None:
                return out

    async def _read(self) -> _Item | None:
        """The item of the next message (None when it carries none, or the call was just re-opened)."""
        if self._cancelled:
            raise StopAsyncIteration
        try:
            msg = await self._call.read()
        except grpc.RpcError as e:
            if self._cancelled and is_cancelled(e):
                raise StopAsyncIteration from None
            await self._reopen_after(e)
            return None
        except asyncio.CancelledError:
            # grpc.aio reports our own call.cancel() as CancelledError: end quietly unless the task is dying.
            if self._cancelled and not _task_cancelling():
                raise StopAsyncIteration from None
            raise
        if msg is grpc.aio.EOF:
            self._ended(request_id_from(await self._call.trailing_metadata()))
            raise StopAsyncIteration
        if self._call_request_id is None:
            self._call_request_id = request_id_from(await self._call.initial_metadata())
        return self._received(msg, self._call_request_id)

    async def _reopen_after(self, e: grpc.RpcError) -> None:
        delay = self._retry_delay(e)
        if delay is None or await self._cancelled_within(delay):
            raise StopAsyncIteration from None
        self._call, self._call_request_id = self._open(), None

    async def _cancelled_within(self, seconds: float) -> bool:
        waiter = asyncio.ensure_future(self._cancel_event.wait())
        try:
            done, _ = await asyncio.wait({waiter}, timeout=seconds)
        finally:  # also when this task is cancelled meanwhile: no waiter left pending
            waiter.cancel()
        return bool(done)

    def cancel(self) -> None:
        """Stop the stream now (the server sees the RPC cancelled); iteration then ends quietly."""
        self._cancelled = True
        self._cancel_event.set()
        self._call.cancel()

    async def __aenter__(self: _Stream) -> _Stream:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self._call.done():
            self.cancel()


class AsyncTextStream(_AsyncCallStream[TextChunk], ResultView[TextResult]):
    """`async for` over TextChunks; afterwards `.result` holds the summary (see `tessera.TextStream`)."""

    def __init__(self, open_call: Opener, retrier: Retrier) -> None:
        super().__init__(TextStreamState(), open_call, retrier)


class AsyncImageStream(_AsyncCallStream[ImageProgress], ResultView[ImageResult]):
    """`async for` over ImageProgress; afterwards `.result` holds the image (see `tessera.ImageStream`)."""

    def __init__(self, open_call: Opener, retrier: Retrier) -> None:
        super().__init__(ImageStreamState(), open_call, retrier)

    async def wait(self, on_progress: Callable[[ImageProgress], None] | None = None) -> ImageResult:
        """Consume the stream (calling `on_progress` per event) and return the image."""
        async for progress in self:
            if on_progress is not None:
                on_progress(progress)
        if self.result is None:
            raise RuntimeError(f"image job {self.job_id or '?'} ended without a result")
        return self.result


class AsyncJobEventStream(_AsyncCallStream[jobs_pb2.JobEvent]):
    """`async for` over a job's events until the job ends; cancel() stops watching (not the job)."""

    def __init__(self, open_call: Opener, retrier: Retrier) -> None:
        super().__init__(WatchState(), open_call, retrier)


class AsyncClient:
    """Asyncio client for the Tessera gateway; create and use it inside one event loop.

    Arguments are those of `tessera.Client`.
    """

    def __init__(self, address: str = _common.DEFAULT_ADDRESS, *, api_key: str | None = None,
                 timeout: float | None = None, tls: bool = False, root_certificates: bytes | None = None,
                 metadata: Sequence[tuple[str, str]] = (), retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
                 retry_rate_limited: bool = True) -> None:
        self._config = ClientConfig(address, api_key, timeout, tls, root_certificates, tuple(metadata),
                                    RetryPolicy(retry_budget_s, retry_rate_limited))
        options = _common.channel_options(f"tessera-python/{__version__}")
        creds = self._config.credentials()
        self._channel = (grpc.aio.secure_channel(address, creds, options=options) if creds is not None
                         else grpc.aio.insecure_channel(address, options=options))
        self._text = text_pb2_grpc.TextGenerationServiceStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._images = images_pb2_grpc.ImageGenerationServiceStub(self._channel)
        self._understanding = understanding_pb2_grpc.UnderstandingServiceStub(self._channel)
        self._models = models_pb2_grpc.ModelServiceStub(self._channel)

    @property
    def address(self) -> str:
        """The gateway address this client talks to."""
        return self._config.address

    async def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        await self._channel.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        return (await self._unary_with_id(method, request, timeout))[0]

    async def _unary_with_id(self, method: Callable[..., Any], request: Any,
                             timeout: float | None) -> tuple[Any, str]:
        """The response and its request id; the same `request` (and idempotency key) on every attempt."""
        retrier, metadata = self._config.unary_retrier(timeout), self._config.call_metadata()
        while True:
            call = method(request, timeout=retrier.timeout(), metadata=metadata)
            try:
                response = await call
            except grpc.RpcError as e:
                delay = retrier.delay_or_raise(e)
            else:
                return response, request_id_from(await call.initial_metadata(), await call.trailing_metadata())
            await asyncio.sleep(delay)

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> tuple[Opener, Retrier]:
        return (opener(method, self._jobs.WatchJob, request, self._config.call_metadata()),
                self._config.stream_retrier(timeout))

    # Text generation -------------------------------------------------------------------------------

    async def generate_text(self, prompt: str, *, idempotency_key: str | None = None,
                            timeout: float | None = None, **params: Unpack[TextParams]) -> TextResult:
        """Generate text and wait for all of it (see `Client.generate_text`)."""
        request = _common.generate_request(prompt, idempotency_key, params)
        response, request_id = await self._unary_with_id(self._text.Generate, request, timeout)
        return result_from_proto(response.result, response.job_id, request_id)

    def stream_text(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                    **params: Unpack[TextParams]) -> AsyncTextStream:
        """Start a generation; `async for chunk in client.stream_text(...)` (no await needed)."""
        request = _common.stream_request(prompt, idempotency_key, params)
        return AsyncTextStream(*self._stream(self._text.GenerateStream, request, timeout))

    # Images and understanding -----------------------------------------------------------------------

    def stream_image(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                     **params: Unpack[ImageParams]) -> AsyncImageStream:
        """Start a text-to-image job; `async for` the progress, then read `.result`."""
        request = _common.generate_image_request(prompt, idempotency_key, params)
        return AsyncImageStream(*self._stream(self._images.GenerateImage, request, timeout))

    async def generate_image(self, prompt: str, *, on_progress: Callable[[ImageProgress], None] | None = None,
                             idempotency_key: str | None = None, timeout: float | None = None,
                             **params: Unpack[ImageParams]) -> ImageResult:
        """Generate an image and wait for it (see `Client.generate_image`)."""
        async with self.stream_image(prompt, idempotency_key=idempotency_key, timeout=timeout, **params) as stream:
            return await stream.wait(on_progress)

    def stream_edit(self, image: ImageInput, instruction: str, *, idempotency_key: str | None = None,
                    timeout: float | None = None, **params: Unpack[ImageParams]) -> AsyncImageStream:
        """Start an edit job on `image` (PNG/JPEG bytes or a file path)."""
        request = _common.edit_image_request(image, instruction, idempotency_key, params)
        return AsyncImageStream(*self._stream(self._images.EditImage, request, timeout))

    async def edit_image(self, image: ImageInput, instruction: str, *,
                         on_progress: Callable[[ImageProgress], None] | None = None,
                         idempotency_key: str | None = None, timeout: float | None = None,
                         **params: Unpack[ImageParams]) -> ImageResult:
        """Edit an image and wait for the result (see `Client.edit_image`)."""
        async with self.stream_edit(image, instruction, idempotency_key=idempotency_key, timeout=timeout,
                                    **params) as stream:
            return await stream.wait(on_progress)

    def understand(self, image: ImageInput, question: str, *, model: str = "", max_tokens: int = 0,
                   idempotency_key: str | None = None, timeout: float | None = None) -> AsyncTextStream:
        """Ask a question about an image; `async for` the answer's TextChunks, then read `.result`."""
        request = _common.understand_request(image, question, idempotency_key, model, max_tokens)
        return AsyncTextStream(*self._stream(self._understanding.Understand, request, timeout))

    async def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models the gateway serves (see `Client.list_models`)."""
        response = await self._unary(self._models.ListModels, models_pb2.ListModelsRequest(), timeout)
        return [model_info_from_proto(m) for m in response.models]

    # Jobs ------------------------------------------------------------------------------------------

    async def submit_job(self, spec: jobs_pb2.JobSpec, *, idempotency_key: str | None = None,
                         timeout: float | None = None) -> jobs_pb2.Job:
        """Queue any job and return at once (see `Client.submit_job`)."""
        request = _common.submit_request(spec, idempotency_key)
        return (await self._unary(self._jobs.SubmitJob, request, timeout)).job

    async def submit_text_job(self, prompt: str, *, idempotency_key: str | None = None,
                              timeout: float | None = None, **params: Unpack[TextParams]) -> jobs_pb2.Job:
        """Queue a text generation (params as `generate_text`)."""
        spec = _common.text_spec(prompt, params)
        return await self.submit_job(spec, idempotency_key=idempotency_key, timeout=timeout)

    async def submit_image_job(self, prompt: str, *, idempotency_key: str | None = None,
                               timeout: float | None = None, **params: Unpack[ImageParams]) -> jobs_pb2.Job:
        """Queue a text-to-image job (params as `generate_image`)."""
        spec = _common.image_spec(prompt, params)
        return await self.submit_job(spec, idempotency_key=idempotency_key, timeout=timeout)

    async def submit_edit_job(self, image: ImageInput, instruction: str, *, idempotency_key: str | None = None,
                              timeout: float | None = None, **params: Unpack[ImageParams]) -> jobs_pb2.Job:
        """Queue an edit of `image` (PNG/JPEG bytes or a file path; params as `edit_image`)."""
        spec = _common.edit_spec(image, instruction, params)
        return await self.submit_job(spec, idempotency_key=idempotency_key, timeout=timeout)

    async def submit_understand_job(self, image: ImageInput, question: str, *, model: str = "",
                                    max_tokens: int = 0, idempotency_key: str | None = None,
                                    timeout: float | None = None) -> jobs_pb2.Job:
        """Queue a question about `image` (PNG/JPEG bytes or a file path)."""
        spec = _common.understand_spec(image, question, model, max_tokens)
        return await self.submit_job(spec, idempotency_key=idempotency_key, timeout=timeout)

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        """The job's current record."""
        return (await self._unary(self._jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), timeout)).job

    def watch_job(self, job_id: str, after_event_id: str = "", *,
                  timeout: float | None = None) -> AsyncJobEventStream:
        """Stream the job's events (from the start, or after `after_event_id`) until it ends."""
        request = jobs_pb2.WatchJobRequest(job_id=job_id, after_event_id=after_event_id)
        return AsyncJobEventStream(*self._stream(self._jobs.WatchJob, request, timeout))

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        """Ask the job to stop; returns the job afterwards. Idempotent."""
        return (await self._unary(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id), timeout)).job

    async def list_jobs(self, page_size: int = 20, page_token: str = "", *,
                        timeout: float | None = None) -> tuple[list[jobs_pb2.Job], str]:
        """One page of the caller's jobs, newest first, and the token of the next page ("" at the end)."""
        request = jobs_pb2.ListJobsRequest(page_size=page_size, page_token=page_token)
        response = await self._unary(self._jobs.ListJobs, request, timeout)
        return list(response.jobs), response.next_page_token
