"""What the sync and async clients share: connection settings, request building, stream bookkeeping.

Both clients are thin shells around this module so that a fix to, say, the retry policy or request
validation lands in both at once.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypedDict, TypeVar

import grpc

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
from tessera.v1 import images_pb2, jobs_pb2, text_pb2, understanding_pb2

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")

DEFAULT_ADDRESS = "localhost:50051"
DEFAULT_UNARY_TIMEOUT_S = 120.0
# Streams live as long as the generation; the deadline only guards against a silently dead gateway.
DEFAULT_STREAM_TIMEOUT_S = 600.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
RETRIED_SERVICES = ("tessera.v1.TextGenerationService", "tessera.v1.ImageGenerationService",
                    "tessera.v1.UnderstandingService", "tessera.v1.JobService")

# UNAVAILABLE only: it means the request never reached (or was refused by) a gateway replica, and
# submissions carry an idempotency key, so a retry attaches to the same job instead of starting another.
# gRPC only retries a stream before its first message arrives, so text is never duplicated.
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.1s",
    "maxBackoff": "2s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["UNAVAILABLE"],
}
SERVICE_CONFIG = json.dumps({
    "methodConfig": [{"name": [{"service": s} for s in RETRIED_SERVICES], "retryPolicy": RETRY_POLICY}],
})


def channel_options(user_agent: str) -> list[tuple[str, str | int]]:
    """Channel arguments for every Tessera channel (sync and aio take the same list)."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # Long silent streams (a job waiting in the queue) must notice a dead connection. 60 s stays well
        # clear of the server's default ping policy, and gRPC sends at most 2 pings without data anyway.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.enable_retries", 1),
        ("grpc.service_config", SERVICE_CONFIG),
        ("grpc.primary_user_agent", user_agent),
    ]


def new_idempotency_key() -> str:
    """A fresh key; sent on every submission so gRPC's automatic retries can never start a second job."""
    return uuid.uuid4().hex


@dataclass(frozen=True)
class ClientConfig:
    """Connection settings of one client; the sync and async clients each hold one."""

    address: str = DEFAULT_ADDRESS
    api_key: str | None = None
    timeout: float | None = None
    tls: bool = False
    root_certificates: bytes | None = None
    metadata: Sequence[tuple[str, str]] = field(default_factory=tuple)

    @property
    def use_tls(self) -> bool:
        """Custom root certificates only make sense with TLS, so passing them turns TLS on."""
        return self.tls or self.root_certificates is not None

    def credentials(self) -> grpc.ChannelCredentials | None:
        """TLS channel credentials, or None for a plaintext channel (local and in-cluster use)."""
        if not self.use_tls:
            return None
        return grpc.ssl_channel_credentials(root_certificates=self.root_certificates)

    def call_metadata(self) -> tuple[tuple[str, str], ...]:
        """Metadata sent with every call: the bearer token plus any user metadata."""
        md = tuple(self.metadata)
        if self.api_key:
            md = (("authorization", f"Bearer {self.api_key}"), *md)
        return md

    def unary_timeout(self, timeout: float | None) -> float:
        """Deadline for a unary call: per-call value, else the client's, else 120 s. Never unbounded."""
        return _pick(timeout, self.timeout, DEFAULT_UNARY_TIMEOUT_S)

    def stream_timeout(self, timeout: float | None) -> float:
        """Deadline for a whole stream: per-call value, else the client's, else 600 s."""
        return _pick(timeout, self.timeout, DEFAULT_STREAM_TIMEOUT_S)


def _pick(call: float | None, client: float | None, default: float) -> float:
    value = call if call is not None else client if client is not None else default
    if value <= 0:
        raise ValueError(f"timeout must be positive, got {value}")
    return float(value)


class TextParams(TypedDict, total=False):
    """Keyword arguments accepted wherever text is generated (typed so editors can complete them)."""

    model: str
    max_tokens: int
    temperature: float
    top_p: float
    seed: int | None
    block_size: int
    tau_add: float | None
    tau_act: float | None
    tau_conf: float | None


def text_request(prompt: str, *, model: str = "", max_tokens: int = 0, temperature: float = 0.0,
                 top_p: float = 0.0, seed: int | None = None, block_size: int = 0,
                 tau_add: float | None = None, tau_act: float | None = None,
                 tau_conf: float | None = None) -> text_pb2.TextRequest:
    """Build a TextRequest; zero/None means "model default", and the gateway validates ranges."""
    params = text_pb2.TextParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                 block_size=block_size)
    # `optional` fields: leaving them unset (not 0) is what asks for the default.
    for name, value in (("seed", seed), ("tau_add", tau_add), ("tau_act", tau_act), ("tau_conf", tau_conf)):
        if value is not None:
            setattr(params, name, value)
    return text_pb2.TextRequest(model=model, prompt=prompt, params=params)


def generate_request(prompt: str, idempotency_key: str | None, params: TextParams) -> text_pb2.GenerateRequest:
    """GenerateRequest with an idempotency key always set."""
    return text_pb2.GenerateRequest(request=text_request(prompt, **params),
                                    idempotency_key=idempotency_key or new_idempotency_key())


def stream_request(prompt: str, idempotency_key: str | None, params: TextParams) -> text_pb2.GenerateStreamRequest:
    """GenerateStreamRequest with an idempotency key always set."""
    return text_pb2.GenerateStreamRequest(request=text_request(prompt, **params),
                                          idempotency_key=idempotency_key or new_idempotency_key())


def submit_request(prompt: str, idempotency_key: str | None, params: TextParams) -> jobs_pb2.SubmitJobRequest:
    """SubmitJobRequest for a text job with an idempotency key always set."""
    spec = jobs_pb2.JobSpec(text=text_request(prompt, **params))
    return jobs_pb2.SubmitJobRequest(spec=spec, idempotency_key=idempotency_key or new_idempotency_key())


class ImageParams(TypedDict, total=False):
    """Keyword arguments of image generation and editing (zero/None = the model's default)."""

    model: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    image_guidance_scale: float
    seed: int | None
    preview: bool


def image_params(*, width: int = 0, height: int = 0, steps: int = 0, guidance_scale: float = 0.0,
                 image_guidance_scale: float = 0.0, seed: int | None = None,
                 preview: bool = False) -> images_pb2.ImageParams:
    p = images_pb2.ImageParams(width=width, height=height, steps=steps, guidance_scale=guidance_scale,
                               image_guidance_scale=image_guidance_scale, preview=preview)
    if seed is not None:
        p.seed = seed
    return p


def image_bytes(image: bytes | str | os.PathLike[str]) -> bytes:
    """Image input as bytes: given bytes, or the contents of a file path (PNG or JPEG)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    with open(image, "rb") as f:
        return f.read()


def generate_image_request(prompt: str, idempotency_key: str | None,
                           params: ImageParams) -> images_pb2.GenerateImageRequest:
    p = dict(params)
    model = str(p.pop("model", ""))
    req = images_pb2.ImageRequest(model=model, prompt=prompt, params=image_params(**p))  # type: ignore[arg-type]
    return images_pb2.GenerateImageRequest(request=req, idempotency_key=idempotency_key or new_idempotency_key())


def edit_image_request(image: bytes | str | os.PathLike[str], instruction: str, idempotency_key: str | None,
                       params: ImageParams) -> images_pb2.EditImageRequest:
    p = dict(params)
    model = str(p.pop("model", ""))
    req = images_pb2.ImageEditRequest(model=model, image=image_bytes(image), instruction=instruction,
                                      params=image_params(**p))  # type: ignore[arg-type]
    return images_pb2.EditImageRequest(request=req, idempotency_key=idempotency_key or new_idempotency_key())


def understand_request(image: bytes | str | os.PathLike[str], question: str, idempotency_key: str | None,
                       model: str = "", max_tokens: int = 0) -> understanding_pb2.UnderstandRequest:
    req = understanding_pb2.UnderstandingRequest(model=model, image=image_bytes(image), question=question,
                                                 max_tokens=max_tokens)
    return understanding_pb2.UnderstandRequest(request=req, idempotency_key=idempotency_key or new_idempotency_key())


class _JobStreamState(Generic[_Item, _Result]):
    """What a job's stream remembers across messages: its job id, the last event id (where to
    resume) and the final result; `feed` turns one message into the item it carries, if any."""

    def __init__(self) -> None:
        self.job_id = ""
        self.last_event_id = ""
        self.result: _Result | None = None

    def _note(self, msg: Any) -> str | None:
        """Record the ids of one message; its payload kind."""
        self.job_id = msg.job_id or self.job_id
        self.last_event_id = msg.event_id or self.last_event_id
        return msg.WhichOneof("payload")

    def feed(self, msg: Any) -> _Item | None:
        raise NotImplementedError


class ImageStreamState(_JobStreamState[ImageProgress, ImageResult]):
    """Turns GenerateImage / EditImage messages into ImageProgress and remembers the job id and result."""

    def feed(self, msg: images_pb2.GenerateImageResponse | images_pb2.EditImageResponse) -> ImageProgress | None:
        kind = self._note(msg)
        if kind == "progress":
            return image_progress_from_proto(msg.progress, self.job_id, msg.event_id)
        if kind == "result":
            self.result = image_result_from_proto(msg.result, self.job_id)
        return None


class StreamState(_JobStreamState[TextChunk, TextResult]):
    """Turns GenerateStream / Understand messages into TextChunks and remembers the job id and final
    result. Messages without a payload (the first one, which only announces the job id) yield no chunk.
    """

    def feed(self, msg: text_pb2.GenerateStreamResponse | understanding_pb2.UnderstandResponse) -> TextChunk | None:
        """Record one message; return the chunk it carries, if any."""
        kind = self._note(msg)
        if kind == "chunk":
            return chunk_from_proto(msg.chunk, self.job_id, msg.event_id)
        if kind == "result":
            self.result = (understanding_result_from_proto(msg.result, self.job_id)
                           if isinstance(msg, understanding_pb2.UnderstandResponse)
                           else result_from_proto(msg.result, self.job_id))
        return None


class JobStreamView(Generic[_Item, _Result]):
    """The job side of a sync or async call stream, read from its `_state`: how messages become
    items, the job id, where to resume, and the result."""

    _state: _JobStreamState[_Item, _Result]

    def _convert(self, msg: Any) -> _Item | None:
        return self._state.feed(msg)

    @property
    def job_id(self) -> str:
        """Id of the job behind the stream ("" until the first message arrived)."""
        return self._state.job_id

    @property
    def last_event_id(self) -> str:
        """Event id of the last message received: where to resume from."""
        return self._state.last_event_id

    @property
    def result(self) -> _Result | None:
        """The final result once the stream finished; None before that or if it was cancelled."""
        return self._state.result


def is_cancelled(e: grpc.RpcError) -> bool:
    """Whether an RpcError is the CANCELLED status our own `cancel()` produces."""
    return hasattr(e, "code") and e.code() == grpc.StatusCode.CANCELLED
