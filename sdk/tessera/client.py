"""Synchronous Tessera client (grpc sync stubs): for scripts, notebooks and threaded servers."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import grpc

from tessera import _common
from tessera._common import ClientConfig, ImageParams, ImageStreamState, JobStreamView, StreamState, TextParams
from tessera._version import __version__
from tessera.errors import from_rpc_error
from tessera.types import ImageProgress, ImageResult, TextChunk, TextResult, result_from_proto
from tessera.v1 import images_pb2_grpc, jobs_pb2, jobs_pb2_grpc, text_pb2_grpc, understanding_pb2_grpc

if TYPE_CHECKING:
    from typing import Unpack

__all__ = ["Client", "ImageStream", "JobEventStream", "TextStream"]

ProgressCallback = Callable[[ImageProgress], None]

_Msg = TypeVar("_Msg")
_Out = TypeVar("_Out")


class _CallStream(Generic[_Msg, _Out]):
    """Iterator over a server-streaming call that raises TesseraError and can be cancelled.

    After our own `cancel()` the iterator just ends: the caller asked for it, so CANCELLED is not an error.
    """

    def __init__(self, call: Any) -> None:
        self._call = call
        self._cancelled = False

    def __iter__(self) -> Iterator[_Out]:
        return self

    def __next__(self) -> _Out:
        while True:
            out = self._convert(self._next_message())
            if out is not None:
                return out

    def _next_message(self) -> _Msg:
        if self._cancelled:
            raise StopIteration
        try:
            return next(self._call)
        except grpc.RpcError as e:
            if self._cancelled and _common.is_cancelled(e):
                raise StopIteration from None
            raise from_rpc_error(e) from e

    def _convert(self, msg: _Msg) -> _Out | None:
        raise NotImplementedError

    def cancel(self) -> None:
        """Stop the stream now (the server sees the RPC cancelled); iteration then ends quietly."""
        self._cancelled = True
        self._call.cancel()

    def __enter__(self) -> _CallStream[_Msg, _Out]:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Leaving the block early (break, exception) must not leave a stream running on the gateway.
        if not self._call.done():
            self.cancel()


class TextStream(JobStreamView[TextChunk, TextResult], _CallStream[Any, TextChunk]):
    """Iterate for TextChunks as text becomes final; afterwards `.result` holds the summary.

    `.job_id` is known from the first message on, so a dropped stream can be resumed with
    `Client.watch_job(stream.job_id, after_event_id=stream.last_event_id)`.
    """

    def __init__(self, call: Any) -> None:
        super().__init__(call)
        self._state = StreamState()

    def __enter__(self) -> TextStream:
        return self


class ImageStream(JobStreamView[ImageProgress, ImageResult], _CallStream[Any, ImageProgress]):
    """Iterate for ImageProgress (patches done / total, optional preview); afterwards `.result` holds the
    image. `.job_id` and `.last_event_id` resume a dropped stream through `Client.watch_job`."""

    def __init__(self, call: Any) -> None:
        super().__init__(call)
        self._state = ImageStreamState()

    def wait(self, on_progress: ProgressCallback | None = None) -> ImageResult:
        """Consume the stream (calling `on_progress` per event) and return the image."""
        for progress in self:
            if on_progress is not None:
                on_progress(progress)
        if self.result is None:
            raise RuntimeError(f"image job {self.job_id or '?'} ended without a result")
        return self.result

    def __enter__(self) -> ImageStream:
        return self


class JobEventStream(_CallStream[jobs_pb2.WatchJobResponse, jobs_pb2.JobEvent]):
    """Iterator of a job's events until the job ends; cancel() stops watching (not the job)."""

    def _convert(self, msg: jobs_pb2.WatchJobResponse) -> jobs_pb2.JobEvent:
        return msg.event

    def __enter__(self) -> JobEventStream:
        return self


class Client:
    """Blocking client for the Tessera gateway; one channel per client, safe to share between threads.

    Args:
        address: "host:port" of the gateway (any gRPC target, e.g. "dns:///tessera:50051").
        api_key: Sent as `authorization: Bearer <key>` with every call.
        timeout: Default deadline in seconds for every call (else 120 s unary, 600 s for streams).
        tls: Use TLS with the system roots (or `root_certificates`, PEM bytes, which imply TLS).
        metadata: Extra (key, value) pairs sent with every call (e.g. tracing headers).
    """

    def __init__(self, address: str = _common.DEFAULT_ADDRESS, *, api_key: str | None = None,
                 timeout: float | None = None, tls: bool = False, root_certificates: bytes | None = None,
                 metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._config = ClientConfig(address, api_key, timeout, tls, root_certificates, tuple(metadata))
        options = _common.channel_options(f"tessera-python/{__version__}")
        creds = self._config.credentials()
        self._channel = (grpc.secure_channel(address, creds, options=options) if creds is not None
                         else grpc.insecure_channel(address, options=options))
        self._text = text_pb2_grpc.TextGenerationServiceStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._images = images_pb2_grpc.ImageGenerationServiceStub(self._channel)
        self._understanding = understanding_pb2_grpc.UnderstandingServiceStub(self._channel)

    @property
    def address(self) -> str:
        """The gateway address this client talks to."""
        return self._config.address

    def close(self) -> None:
        """Close the channel; in-flight calls are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def _unary(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        try:
            return method(request, timeout=self._config.unary_timeout(timeout),
                          metadata=self._config.call_metadata())
        except grpc.RpcError as e:
            raise from_rpc_error(e) from e

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> Any:
        # Starting the call never raises: errors, even an unreachable gateway, surface on iteration.
        return method(request, timeout=self._config.stream_timeout(timeout), metadata=self._config.call_metadata())

    # Text generation -------------------------------------------------------------------------------

    def generate_text(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                      **params: Unpack[TextParams]) -> TextResult:
        """Generate text and wait for all of it.

        Params (model, max_tokens, temperature, top_p, seed, block_size, tau_add, tau_act, tau_conf)
        default to the model's own; `idempotency_key` (auto-generated if omitted) makes retries safe.
        """
        request = _common.generate_request(prompt, idempotency_key, params)
        response = self._unary(self._text.Generate, request, timeout)
        return result_from_proto(response.result, response.job_id)

    def stream_text(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                    **params: Unpack[TextParams]) -> TextStream:
        """Start a generation and return a TextStream yielding text as it becomes final."""
        request = _common.stream_request(prompt, idempotency_key, params)
        return TextStream(self._stream(self._text.GenerateStream, request, timeout))

    # Images and understanding -----------------------------------------------------------------------

    def stream_image(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                     **params: Unpack[ImageParams]) -> ImageStream:
        """Start a text-to-image job; iterate the stream for progress, then read `.result`.

        Params (model, width, height, steps, guidance_scale, seed, preview) default to the model's own.
        """
        request = _common.generate_image_request(prompt, idempotency_key, params)
        return ImageStream(self._stream(self._images.GenerateImage, request, timeout))

    def generate_image(self, prompt: str, *, on_progress: ProgressCallback | None = None,
                       idempotency_key: str | None = None, timeout: float | None = None,
                       **params: Unpack[ImageParams]) -> ImageResult:
        """Generate an image and wait for it; `on_progress` sees each ImageProgress on the way."""
        with self.stream_image(prompt, idempotency_key=idempotency_key, timeout=timeout, **params) as stream:
            return stream.wait(on_progress)

    def stream_edit(self, image: bytes | str | os.PathLike[str], instruction: str, *,
                    idempotency_key: str | None = None, timeout: float | None = None,
                    **params: Unpack[ImageParams]) -> ImageStream:
        """Start an edit job on `image` (PNG/JPEG bytes or a file path); iterate for progress."""
        request = _common.edit_image_request(image, instruction, idempotency_key, params)
        return ImageStream(self._stream(self._images.EditImage, request, timeout))

    def edit_image(self, image: bytes | str | os.PathLike[str], instruction: str, *,
                   on_progress: ProgressCallback | None = None, idempotency_key: str | None = None,
                   timeout: float | None = None, **params: Unpack[ImageParams]) -> ImageResult:
        """Edit an image following `instruction` and wait for the result."""
        with self.stream_edit(image, instruction, idempotency_key=idempotency_key, timeout=timeout,
                              **params) as stream:
            return stream.wait(on_progress)

    def understand(self, image: bytes | str | os.PathLike[str], question: str, *, model: str = "",
                   max_tokens: int = 0, idempotency_key: str | None = None,
                   timeout: float | None = None) -> TextStream:
        """Ask a question about an image; the answer streams as TextChunks, then `.result` summarises it."""
        request = _common.understand_request(image, question, idempotency_key, model, max_tokens)
        return TextStream(self._stream(self._understanding.Understand, request, timeout))

    # Jobs ------------------------------------------------------------------------------------------

    def submit_text_job(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                        **params: Unpack[TextParams]) -> jobs_pb2.Job:
        """Queue a text generation and return at once; the same idempotency key returns the same job."""
        request = _common.submit_request(prompt, idempotency_key, params)
        return self._unary(self._jobs.SubmitJob, request, timeout).job

    def get_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        """The job's current record."""
        return self._unary(self._jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), timeout).job

    def watch_job(self, job_id: str, after_event_id: str = "", *, timeout: float | None = None) -> JobEventStream:
        """Stream the job's events (from the start, or after `after_event_id`) until it ends."""
        request = jobs_pb2.WatchJobRequest(job_id=job_id, after_event_id=after_event_id)
        return JobEventStream(self._stream(self._jobs.WatchJob, request, timeout))

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        """Ask the job to stop; returns the job afterwards. Idempotent."""
        return self._unary(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id), timeout).job

    def list_jobs(self, page_size: int = 20, page_token: str = "", *,
                  timeout: float | None = None) -> tuple[list[jobs_pb2.Job], str]:
        """One page of the caller's jobs, newest first, and the token of the next page ("" at the end)."""
        request = jobs_pb2.ListJobsRequest(page_size=page_size, page_token=page_token)
        response = self._unary(self._jobs.ListJobs, request, timeout)
        return list(response.jobs), response.next_page_token
