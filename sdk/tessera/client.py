"""Synchronous Tessera client (grpc sync stubs): for scripts, notebooks and threaded servers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import grpc

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

__all__ = ["Client", "ImageStream", "JobEventStream", "TextStream"]

ProgressCallback = Callable[[ImageProgress], None]

_Item = TypeVar("_Item")
_Stream = TypeVar("_Stream", bound="_CallStream[Any]")


class _CallStream(StreamCore[_Item]):
    """Iterator over a server-streaming call that raises TesseraError, can be cancelled, and re-opens
    itself after a retryable failure (how and where: tessera._streams).

    After our own `cancel()` the iterator just ends: the caller asked for it, so CANCELLED is not an error.
    """

    def __init__(self, state: StreamState[_Item, Any], open_call: Opener, retrier: Retrier) -> None:
        self._setup(state, open_call, retrier)
        # An Event, not a flag: a retry's back-off waits on it, so cancel() from another thread ends it at once.
        self._cancelled = threading.Event()
        # Starting the call never raises: errors, even an unreachable gateway, surface on iteration.
        self._call = self._open()
        self._call_request_id: str | None = None

    def __iter__(self: _Stream) -> _Stream:
        return self

    def __next__(self) -> _Item:
        while True:
            out = self._read()
            if out is not None:
                return out

    def _read(self) -> _Item | None:
        """The item of the next message (None when it carries none, or the call was just re-opened)."""
        if self._cancelled.is_set():
            raise StopIteration
        try:
            msg = next(self._call)
        except StopIteration:
            self._ended(request_id_from(self._call.trailing_metadata()))
            raise
        except grpc.RpcError as e:
            if self._cancelled.is_set() and is_cancelled(e):
                raise StopIteration from None
            self._reopen_after(e)
            return None
        if self._call_request_id is None:  # the initial metadata is there, without waiting, once a message is
            self._call_request_id = request_id_from(self._call.initial_metadata())
        return self._received(msg, self._call_request_id)

    def _reopen_after(self, e: grpc.RpcError) -> None:
        delay = self._retry_delay(e)
        if delay is None or self._cancelled.wait(delay):
            raise StopIteration from None
        self._call, self._call_request_id = self._open(), None
        if self._cancelled.is_set():  # cancel() ran while the new call was being opened
            self._call.cancel()

    def cancel(self) -> None:
        """Stop the stream now (the server sees the RPC cancelled); iteration then ends quietly."""
        self._cancelled.set()
        self._call.cancel()

    def __enter__(self: _Stream) -> _Stream:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        # Leaving the block early (break, exception) must not leave a stream running on the gateway.
        if not self._call.done():
            self.cancel()


class TextStream(_CallStream[TextChunk], ResultView[TextResult]):
    """Iterate for TextChunks as text becomes final; afterwards `.result` holds the summary.

    A stream that fails with UNAVAILABLE resumes by itself (through `watch_job` after `.last_event_id`),
    so each chunk arrives once. `.job_id` is known from the first message on.
    """

    def __init__(self, open_call: Opener, retrier: Retrier) -> None:
        super().__init__(TextStreamState(), open_call, retrier)


class ImageStream(_CallStream[ImageProgress], ResultView[ImageResult]):
    """Iterate for ImageProgress (patches done / total, optional preview); afterwards `.result` holds the
    image. Resumes by itself after UNAVAILABLE, like `TextStream`."""

    def __init__(self, open_call: Opener, retrier: Retrier) -> None:
        super().__init__(ImageStreamState(), open_call, retrier)

    def wait(self, on_progress: ProgressCallback | None = None) -> ImageResult:
        """Consume the stream (calling `on_progress` per event) and return the image."""
        for progress in self:
            if on_progress is not None:
                on_progress(progress)
        if self.result is None:
            raise RuntimeError(f"image job {self.job_id or '?'} ended without a result")
        return self.result


class JobEventStream(_CallStream[jobs_pb2.JobEvent]):
    """Iterator of a job's events until the job ends; cancel() stops watching (not the job).
    After UNAVAILABLE it re-watches after the last event received."""

    def __init__(self, open_call: Opener, retrier: Retrier) -> None:
        super().__init__(WatchState(), open_call, retrier)


class Client:
    """Blocking client for the Tessera gateway; one channel per client, safe to share between threads.

    Args:
        address: "host:port" of the gateway (any gRPC target, e.g. "dns:///tessera:50051").
        api_key: Sent as `authorization: Bearer <key>` with every call.
        timeout: Default deadline in seconds for every call (else 120 s unary, 600 s for streams).
        tls: Use TLS with the system roots (or `root_certificates`, PEM bytes, which imply TLS).
        metadata: Extra (key, value) pairs sent with every call (e.g. tracing headers).
        retry_budget_s: How long a call keeps retrying UNAVAILABLE (e.g. a gateway restart), counted from
            its first failure; never past the call's deadline. 0 disables retries.
        retry_rate_limited: Retry RESOURCE_EXHAUSTED after the server's RetryInfo delay (when it fits
            the budget and deadline); False raises ResourceExhaustedError at once.
    """

    def __init__(self, address: str = _common.DEFAULT_ADDRESS, *, api_key: str | None = None,
                 timeout: float | None = None, tls: bool = False, root_certificates: bytes | None = None,
                 metadata: Sequence[tuple[str, str]] = (), retry_budget_s: float = DEFAULT_RETRY_BUDGET_S,
                 retry_rate_limited: bool = True) -> None:
        self._config = ClientConfig(address, api_key, timeout, tls, root_certificates, tuple(metadata),
                                    RetryPolicy(retry_budget_s, retry_rate_limited))
        options = _common.channel_options(f"tessera-python/{__version__}")
        creds = self._config.credentials()
        self._channel = (grpc.secure_channel(address, creds, options=options) if creds is not None
                         else grpc.insecure_channel(address, options=options))
        self._text = text_pb2_grpc.TextGenerationServiceStub(self._channel)
        self._jobs = jobs_pb2_grpc.JobServiceStub(self._channel)
        self._images = images_pb2_grpc.ImageGenerationServiceStub(self._channel)
        self._understanding = understanding_pb2_grpc.UnderstandingServiceStub(self._channel)
        self._models = models_pb2_grpc.ModelServiceStub(self._channel)

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

    def _unary(self, method: Any, request: Any, timeout: float | None) -> Any:
        return self._unary_with_id(method, request, timeout)[0]

    def _unary_with_id(self, method: Any, request: Any, timeout: float | None) -> tuple[Any, str]:
        """The response and its request id; the same `request` (and idempotency key) on every attempt."""
        retrier, metadata = self._config.unary_retrier(timeout), self._config.call_metadata()
        while True:
            try:
                response, call = method.with_call(request, timeout=retrier.timeout(), metadata=metadata)
            except grpc.RpcError as e:
                delay = retrier.delay_or_raise(e)
            else:
                return response, request_id_from(call.initial_metadata(), call.trailing_metadata())
            time.sleep(delay)

    def _stream(self, method: Callable[..., Any], request: Any, timeout: float | None) -> tuple[Opener, Retrier]:
        """What a stream class needs to open `method(request)` and to resume it through WatchJob."""
        return (opener(method, self._jobs.WatchJob, request, self._config.call_metadata()),
                self._config.stream_retrier(timeout))

    # Text generation -------------------------------------------------------------------------------

    def generate_text(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                      **params: Unpack[TextParams]) -> TextResult:
        """Generate text and wait for all of it.

        Params (model, max_tokens, temperature, top_p, seed, block_size, tau_add, tau_act, tau_conf)
        default to the model's own; `raw_prompt=True` sends the prompt exactly as written (no chat
        template, no BOS: for a prompt formatted by the caller). `idempotency_key` (auto-generated if
        omitted) makes retries safe.
        """
        request = _common.generate_request(prompt, idempotency_key, params)
        response, request_id = self._unary_with_id(self._text.Generate, request, timeout)
        return result_from_proto(response.result, response.job_id, request_id)

    def stream_text(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                    **params: Unpack[TextParams]) -> TextStream:
        """Start a generation and return a TextStream yielding text as it becomes final."""
        request = _common.stream_request(prompt, idempotency_key, params)
        return TextStream(*self._stream(self._text.GenerateStream, request, timeout))

    # Images and understanding -----------------------------------------------------------------------

    def stream_image(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                     **params: Unpack[ImageParams]) -> ImageStream:
        """Start a text-to-image job; iterate the stream for progress, then read `.result`.

        Params (model, width, height, steps, guidance_scale, seed, preview) default to the model's own.
        """
        request = _common.generate_image_request(prompt, idempotency_key, params)
        return ImageStream(*self._stream(self._images.GenerateImage, request, timeout))

    def generate_image(self, prompt: str, *, on_progress: ProgressCallback | None = None,
                       idempotency_key: str | None = None, timeout: float | None = None,
                       **params: Unpack[ImageParams]) -> ImageResult:
        """Generate an image and wait for it; `on_progress` sees each ImageProgress on the way."""
        with self.stream_image(prompt, idempotency_key=idempotency_key, timeout=timeout, **params) as stream:
            return stream.wait(on_progress)

    def stream_edit(self, image: ImageInput, instruction: str, *, idempotency_key: str | None = None,
                    timeout: float | None = None, **params: Unpack[ImageParams]) -> ImageStream:
        """Start an edit job on `image` (PNG/JPEG bytes or a file path); iterate for progress."""
        request = _common.edit_image_request(image, instruction, idempotency_key, params)
        return ImageStream(*self._stream(self._images.EditImage, request, timeout))

    def edit_image(self, image: ImageInput, instruction: str, *, on_progress: ProgressCallback | None = None,
                   idempotency_key: str | None = None, timeout: float | None = None,
                   **params: Unpack[ImageParams]) -> ImageResult:
        """Edit an image following `instruction` and wait for the result."""
        with self.stream_edit(image, instruction, idempotency_key=idempotency_key, timeout=timeout,
                              **params) as stream:
            return stream.wait(on_progress)

    def understand(self, image: ImageInput, question: str, *, model: str = "", max_tokens: int = 0,
                   idempotency_key: str | None = None, timeout: float | None = None) -> TextStream:
        """Ask a question about an image; the answer streams as TextChunks, then `.result` summarises it."""
        request = _common.understand_request(image, question, idempotency_key, model, max_tokens)
        return TextStream(*self._stream(self._understanding.Understand, request, timeout))

    def list_models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models the gateway serves (text models first), with their kinds and limits."""
        response = self._unary(self._models.ListModels, models_pb2.ListModelsRequest(), timeout)
        return [model_info_from_proto(m) for m in response.models]

    # Jobs ------------------------------------------------------------------------------------------

    def submit_job(self, spec: jobs_pb2.JobSpec, *, idempotency_key: str | None = None,
                   timeout: float | None = None) -> jobs_pb2.Job:
        """Queue any job (`spec` is a tessera.v1.JobSpec) and return at once; the same idempotency key
        returns the same job. The `submit_*_job` methods build the spec for you."""
        return self._unary(self._jobs.SubmitJob, _common.submit_request(spec, idempotency_key), timeout).job

    def submit_text_job(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                        **params: Unpack[TextParams]) -> jobs_pb2.Job:
        """Queue a text generation (params as `generate_text`)."""
        return self.submit_job(_common.text_spec(prompt, params), idempotency_key=idempotency_key, timeout=timeout)

    def submit_image_job(self, prompt: str, *, idempotency_key: str | None = None, timeout: float | None = None,
                         **params: Unpack[ImageParams]) -> jobs_pb2.Job:
        """Queue a text-to-image job (params as `generate_image`)."""
        return self.submit_job(_common.image_spec(prompt, params), idempotency_key=idempotency_key, timeout=timeout)

    def submit_edit_job(self, image: ImageInput, instruction: str, *, idempotency_key: str | None = None,
                        timeout: float | None = None, **params: Unpack[ImageParams]) -> jobs_pb2.Job:
        """Queue an edit of `image` (PNG/JPEG bytes or a file path; params as `edit_image`)."""
        spec = _common.edit_spec(image, instruction, params)
        return self.submit_job(spec, idempotency_key=idempotency_key, timeout=timeout)

    def submit_understand_job(self, image: ImageInput, question: str, *, model: str = "", max_tokens: int = 0,
                              idempotency_key: str | None = None, timeout: float | None = None) -> jobs_pb2.Job:
        """Queue a question about `image` (PNG/JPEG bytes or a file path)."""
        spec = _common.understand_spec(image, question, model, max_tokens)
        return self.submit_job(spec, idempotency_key=idempotency_key, timeout=timeout)

    def get_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        """The job's current record."""
        return self._unary(self._jobs.GetJob, jobs_pb2.GetJobRequest(job_id=job_id), timeout).job

    def watch_job(self, job_id: str, after_event_id: str = "", *, timeout: float | None = None) -> JobEventStream:
        """Stream the job's events (from the start, or after `after_event_id`) until it ends."""
        request = jobs_pb2.WatchJobRequest(job_id=job_id, after_event_id=after_event_id)
        return JobEventStream(*self._stream(self._jobs.WatchJob, request, timeout))

    def cancel_job(self, job_id: str, *, timeout: float | None = None) -> jobs_pb2.Job:
        """Ask the job to stop; returns the job afterwards. Idempotent."""
        return self._unary(self._jobs.CancelJob, jobs_pb2.CancelJobRequest(job_id=job_id), timeout).job

    def list_jobs(self, page_size: int = 20, page_token: str = "", *,
                  timeout: float | None = None) -> tuple[list[jobs_pb2.Job], str]:
        """One page of the caller's jobs, newest first, and the token of the next page ("" at the end)."""
        request = jobs_pb2.ListJobsRequest(page_size=page_size, page_token=page_token)
        response = self._unary(self._jobs.ListJobs, request, timeout)
        return list(response.jobs), response.next_page_token
