"""Asynchronous Tessera client (grpc.aio): the same API as `tessera.Client`, as coroutines.

Use it from asyncio services that fan out many generations at once; one channel multiplexes them all.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc
import grpc.aio

from tessera import _common
from tessera._common import ClientConfig, ImageParams, ImageStreamState, JobStreamView, StreamState, TextParams
from tessera._version import __version__
from tessera.errors import from_rpc_error
from tessera.types import ImageProgress, ImageResult, TextChunk, TextResult, result_from_proto
from tessera.v1 import images_pb2_grpc, jobs_pb2, jobs_pb2_grpc, text_pb2_grpc, understanding_pb2_grpc

if TYPE_CHECKING:
    from typing import Unpack

__all__ = ["AsyncClient", "AsyncImageStream", "AsyncJobEventStream", "AsyncTextStream"]

_Msg = TypeVar("_Msg")
_Out = TypeVar("_Out")


def _task_cancelling() -> bool:
    """Whether the current task itself is being cancelled (then CancelledError must propagate)."""
    task = asyncio.current_task()
    return task is not None and bool(getattr(task, "cancelling", lambda: 0)())


class _AsyncCallStream(Generic[_Msg, _Out]):
    """Async iterator over a server-streaming call that raises TesseraError and can be cancelled."""

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def __aiter__(self) -> _AsyncCallStream[_Msg, _Out]:
        return self

    async def __anext__(self) -> _Out:
        while True:
            out = self._convert(await self._next_message())
            if out is not None:
                return out

    async def _next_message(self) -> _Msg:
        if self._cancelled:
            raise StopAsyncIteration
        try:
            msg = await self._call.read()
        except grpc.RpcError as e:
            if self._cancelled and _common.is_cancelled(e):
                raise StopAsyncIteration from None
            raise from_rpc_error(e) from e
        except asyncio.CancelledError:
            # grpc.aio reports our own call.cancel() as CancelledError: end quietly unless the task is dying.
            if self._cancelled and not _task_cancelling():
                raise StopAsyncIteration from None
            raise
        if msg is grpc.aio.EOF:
            raise StopAsyncIteration
        return msg

    def _convert(self, msg: _Msg) -> _Out | None:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop the stream now (the server sees the RPC cancelled); iteration then ends quietly."""
        self._cancelled = True
        self._call.cancel()

    async def __aenter__(self) -> _AsyncCallStream[_Msg, _Out]:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if not self._call.done():
            self.cancel()


class AsyncTextStream(JobStreamView[TextChunk, TextResult], _AsyncCallStream[Any, TextChunk]):
    """`async for` over TextChunks; afterwards `.result` holds the summary (see `tessera.TextStream`)."""

    def __init__(self, call: Any) -> None:
        super().__init__(call)
        self._state = StreamState()

    async def __aenter__(self) -> AsyncTextStream:
        return self


class AsyncImageStream(JobStreamView[ImageProgress, ImageResult], _AsyncCallStream[Any, ImageProgress]):
    """`async for` over ImageProgress; afterwards `.result` holds the image (see `tessera.ImageStream`)."""

    def __init__(self, call: Any) -> None:
        super().__init__(call)
        self._state = ImageStreamState()

    async def wait(self, on_progress: Callable[[ImageProgress], None] | None = None) -> ImageResult:
        """Consume the stream (calling `on_progress` per event) and return the image."""
        async for progress in self:
            if on_progress is not None:
                on_progress(progress)
        if self.result is None:
            raise RuntimeError(f"image job {self.job_id or '?'} ended without a result")
        return self.result

    async def __aenter__(self) -> AsyncImageStream:
        return self


class AsyncJobEventStream(_AsyncCallStream[jobs_pb2.WatchJobResponse, jobs_pb2.JobEvent]):
    """`async for` over a job's events until the job ends; cancel() stops watching (not the job)."""

    def _convert(self, msg: jobs_pb2.WatchJobResponse) -> jobs_pb2.JobEvent:
        return msg.event

    async def __aenter__(self) -> AsyncJobEventStream:
        return self


class AsyncClient:
    """Asyncio client for the Tessera gateway; create and use it inside one event loop.

    Arguments are those of `tessera.Client`.
    """

    def __init__(self, address: str = _common.DEFAULT_ADDRESS, *, api_key: str | None = None,
                 timeout: float | None = None, tls: bool = False, root_certificates: bytes | None = None,
                 metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._config = ClientConfig(address, api_key, timeout, tls, root_certificates, tuple(metadata))
        options = _common.channel_options(f"tessera-python/{__version__}")
        creds = self._config.credentials()
        self._channel = (grpc.aio.secure_channel(address, creds, options=options) if creds is not None
                         else grpc.aio.insecure_channel(address, options=options))
        self._text = text_pb2_grpc.TextGenerationServiceStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._images = images_pb2_grpc.ImageGenerationServiceStub(self._channel)
        self._understanding = understanding_pb2_grpc.UnderstandingServiceStub(self._channel)

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
        try:
            return await method(request, timeout=self._config.unary_timeout(timeout),
                                metadata=self._config.call_metadata())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        return method(request, timeout=self._config.stream_timeout(timeout), metadata=self._config.call_metadata())

    # Text generation -------------------------------------------------------------------------------

    async def generate_text(self, prompt: str, *, idempotency_key: str | None = None,
                            timeout: float | None = None, **params: Unpack[TextParams]) -> TextResult:
        """Generate text and wait for all of it (see `Client.generate_text`)."""
        request = _common.generate_request(prompt, idempotency_key, params)
        response = await self._unary(self._text.Generate, request, timeout)
        return result_from_proto(response.result, response.job_id)

    def stream_text(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                    **params: Unpack[TextParams]) -> AsyncTextStream:
        """Start a generation; `async for chunk in client.stream_text(...)` (no await needed)."""
        request = _common.stream_request(prompt, idempotency_key, params)
        return AsyncTextStream(self._stream(self._text.GenerateStream, request, timeout))

    # Images and understanding -----------------------------------------------------------------------

    def stream_image(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                     **params: Unpack[ImageParams]) -> AsyncImageStream:
        """Start a text-to-image job; `async for` the progress, then read `.result`."""
        request = _common.generate_image_request(prompt, idempotency_key, params)
        return AsyncImageStream(self._stream(self._images.GenerateImage, request, timeout))

    async def generate_image(self, prompt: str, *, on_progress: Callable[[ImageProgress], None] | None = None,
                             idempotency_key: str | None = None, timeout: float | None = None,
                             **params: Unpack[ImageParams]) -> ImageResult:
        """Generate an image and wait for it (see `Client.generate_image`)."""
        async with self.stream_image(prompt, idempotency_key=idempotency_key, timeout=timeout, **params) as stream:
            return await stream.wait(on_progress)

    def stream_edit(self, image: bytes | str | os.PathLike[str], instruction: str, *,
                    idempotency_key: str | None = None, timeout: float | None = None,
                    **params: Unpack[ImageParams]) -> AsyncImageStream:
        """Start an edit job on `image` (PNG/JPEG bytes or a file path)."""
        request = _common.edit_image_request(image, instruction, idempotency_key, params)
        return AsyncImageStream(self._stream(self._images.EditImage, request, timeout))

    async def edit_image(self, image: bytes | str | os.PathLike[str], instruction: str, *,
                         on_progress: Callable[[ImageProgress], None] | None = None,
                         idempotency_key: str | None = None, timeout: float | None = None,
                         **params: Unpack[ImageParams]) -> ImageResult:
        """Edit an image and wait for the result (see `Client.edit_image`)."""
        async with self.stream_edit(image, instruction, idempotency_key=idempotency_key, timeout=timeout,
                                    **params) as stream:
            return await stream.wait(on_progress)

    def understand(self, image: bytes | str | os.PathLike[str], question: str, *, model: str = "",
                   max_tokens: int = 0, idempotency_key: str | None = None,
                   timeout: float | None = None) -> AsyncTextStream:
        """Ask a question about an image; `async for` the answer's TextChunks, then read `.result`."""
        request = _common.understand_request(image, question, idempotency_key, model, max_tokens)
        return AsyncTextStream(self._stream(self._understanding.Understand, request, timeout))

    # Jobs ------------------------------------------------------------------------------------------

    async def submit_text_job(self, prompt: str, *, idempotency_key: str | None = None,
                              timeout: float | None = None, **params: Unpack[TextParams]) -> jobs_pb2.Job:
        """Queue a text generation and return at once; the same idempotency key returns the same job."""
        request = _common.submit_request(prompt, idempotency_key, params)
        return (await self._unary(self._jobs.SubmitJob, request, timeout)).job

    async def get_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        """The job's current record."""
        return (await self._unary(self._jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), timeout)).job

    def watch_job(self, job_id: str, after_event_id: str = "", *,
                  timeout: float | None = None) -> AsyncJobEventStream:
        """Stream the job's events (from the start, or after `after_event_id`) until it ends."""
        request = jobs_pb2.WatchJobRequest(job_id=job_id, after_event_id=after_event_id)
        return AsyncJobEventStream(self._stream(self._jobs.WatchJob, request, timeout))

    async def cancel_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        """Ask the job to stop; returns the job afterwards. Idempotent."""
        return (await self._unary(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id), timeout)).job

    async def list_jobs(self, page_size: int = 20, page_token: str = "", *,
                        timeout: float | None = None) -> tuple[list[jobs_pb2.Job], str]:
        """One page of the caller's jobs, newest first, and the token of the next page ("" at the end)."""
        request = jobs_pb2.ListJobsRequest(page_size=page_size, page_token=page_token)
        response = await self._unary(self._jobs.ListJobs, request, timeout)
        return list(response.jobs), response.next_page_token
