"""What the sync and async clients share: connection settings and request building.

Both clients are thin shells around this module (and `_retry` for when to retry, `_streams` for stream
bookkeeping and resuming) so that a fix to, say, the retry policy or request validation lands in both at once.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypedDict

import grpc

from tessera._retry import Retrier, RetryPolicy
from tessera.v1 import images_pb2, jobs_pb2, text_pb2, understanding_pb2

DEFAULT_ADDRESS = "localhost:50051"
DEFAULT_UNARY_TIMEOUT_S = 120.0
# Streams live as long as the generation; the deadline only guards against a silently dead gateway.
DEFAULT_STREAM_TIMEOUT_S = 600.0
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


def channel_options(user_agent: str) -> list[tuple[str, str | int]]:
    """Channel arguments for every Tessera channel (sync and aio take the same list)."""
    return [
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        # Long silent streams (a job waiting in the queue) must notice a dead connection. 60 s stays well
        # clear of the server's default ping policy, and gRPC sends at most 2 pings without data anyway.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Retries are the SDK's own (tessera._retry: a time budget, RetryInfo, stream resume). gRPC keeps only
        # its transparent retries of calls that never left the client, e.g. one racing a restart's GOAWAY.
        ("grpc.enable_retries", 1),
        # While the gateway is down every call fails at once until the channel reconnects, and gRPC's
        # default reconnect backoff (1 s growing to 120 s) overshoots a restart by seconds to minutes.
        # Trying at least every 5 s lets the SDK's retries see the replacement within its budget.
        ("grpc.initial_reconnect_backoff_ms", 500),
        ("grpc.max_reconnect_backoff_ms", 5_000),
        ("grpc.primary_user_agent", user_agent),
    ]


def new_idempotency_key() -> str:
    """A fresh key, made once per SDK call and sent on each of its attempts: a retry never starts a second job."""
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
    retry: RetryPolicy = field(default_factory=RetryPolicy)

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
        """Metadata of one SDK call, sent on each of its attempts: the bearer token, any user metadata,
        and an x-request-id of its own (unless the user set one), so the gateway logs every retry and
        resume of the call under one id."""
        md = tuple(self.metadata)
        if self.api_key:
            md = (("authorization", f"Bearer {self.api_key}"), *md)
        if not any(k == "x-request-id" for k, _ in md):
            md = (*md, ("x-request-id", uuid.uuid4().hex))
        return md

    def unary_timeout(self, timeout: float | None) -> float:
        """Deadline for a unary call: per-call value, else the client's, else 120 s. Never unbounded."""
        return _pick(timeout, self.timeout, DEFAULT_UNARY_TIMEOUT_S)

    def stream_timeout(self, timeout: float | None) -> float:
        """Deadline for a whole stream: per-call value, else the client's, else 600 s."""
        return _pick(timeout, self.timeout, DEFAULT_STREAM_TIMEOUT_S)

    def unary_retrier(self, timeout: float | None) -> Retrier:
        """Retry state of one unary call; its deadline covers every attempt."""
        return Retrier(self.retry, self.unary_timeout(timeout))

    def stream_retrier(self, timeout: float | None) -> Retrier:
        """Retry state of one stream; its deadline covers every re-open."""
        return Retrier(self.retry, self.stream_timeout(timeout))


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
    raw_prompt: bool


def text_request(prompt: str, *, model: str = "", max_tokens: int = 0, temperature: float = 0.0,
                 top_p: float = 0.0, seed: int | None = None, block_size: int = 0,
                 tau_add: float | None = None, tau_act: float | None = None,
                 tau_conf: float | None = None, raw_prompt: bool = False) -> text_pb2.TextRequest:
    """Build a TextRequest; zero/None means "model default", and the gateway validates ranges.
    raw_prompt sends the prompt exactly as written (no chat template, no BOS)."""
    params = text_pb2.TextParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                 block_size=block_size, raw_prompt=raw_prompt)
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


ImageInput = bytes | str | os.PathLike[str]


def image_bytes(image: ImageInput) -> bytes:
    """Image input as bytes: given bytes, or the contents of a file path (PNG or JPEG)."""
    if isinstance(image, bytes | bytearray | memoryview):
        return bytes(image)
    with open(image, "rb") as f:
        return f.read()


def image_request(prompt: str, params: ImageParams) -> images_pb2.ImageRequest:
    p = dict(params)
    model = str(p.pop("model", ""))
    return images_pb2.ImageRequest(model=model, prompt=prompt, params=image_params(**p))  # type: ignore[arg-type]


def edit_request(image: ImageInput, instruction: str, params: ImageParams) -> images_pb2.ImageEditRequest:
    p = dict(params)
    model = str(p.pop("model", ""))
    return images_pb2.ImageEditRequest(model=model, image=image_bytes(image), instruction=instruction,
                                       params=image_params(**p))  # type: ignore[arg-type]


def understanding_request(image: ImageInput, question: str, model: str = "",
                          max_tokens: int = 0) -> understanding_pb2.UnderstandingRequest:
    return understanding_pb2.UnderstandingRequest(model=model, image=image_bytes(image), question=question,
                                                  max_tokens=max_tokens)


def generate_image_request(prompt: str, idempotency_key: str | None,
                           params: ImageParams) -> images_pb2.GenerateImageRequest:
    return images_pb2.GenerateImageRequest(request=image_request(prompt, params),
                                           idempotency_key=idempotency_key or new_idempotency_key())


def edit_image_request(image: ImageInput, instruction: str, idempotency_key: str | None,
                       params: ImageParams) -> images_pb2.EditImageRequest:
    return images_pb2.EditImageRequest(request=edit_request(image, instruction, params),
                                       idempotency_key=idempotency_key or new_idempotency_key())


def understand_request(image: ImageInput, question: str, idempotency_key: str | None,
                       model: str = "", max_tokens: int = 0) -> understanding_pb2.UnderstandRequest:
    return understanding_pb2.UnderstandRequest(request=understanding_request(image, question, model, max_tokens),
                                               idempotency_key=idempotency_key or new_idempotency_key())


def submit_request(spec: jobs_pb2.JobSpec, idempotency_key: str | None) -> jobs_pb2.SubmitJobRequest:
    """SubmitJobRequest with an idempotency key always set."""
    return jobs_pb2.SubmitJobRequest(spec=spec, idempotency_key=idempotency_key or new_idempotency_key())


def text_spec(prompt: str, params: TextParams) -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(text=text_request(prompt, **params))


def image_spec(prompt: str, params: ImageParams) -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(image=image_request(prompt, params))


def edit_spec(image: ImageInput, instruction: str, params: ImageParams) -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(edit=edit_request(image, instruction, params))


def understand_spec(image: ImageInput, question: str, model: str = "", max_tokens: int = 0) -> jobs_pb2.JobSpec:
    return jobs_pb2.JobSpec(understand=understanding_request(image, question, model, max_tokens))
