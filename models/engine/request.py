"""What the engine is asked and what it answers: requests, deltas, completions and per-request stats."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from models.decoders import Decoder, FinishReason
from models.sampling import SamplingParams, request_seed

RequestState = Literal["running", "finished", "cancelled", "failed"]


class DecodeCancelled(Exception):
    """What a request's stream raises once the request is cancelled (it decodes no further)."""


class DeadlineExceeded(DecodeCancelled):
    """What a request's stream raises once its deadline passed (it decodes no further)."""


@dataclass(slots=True)
class TextRequest:
    prompt: str
    params: SamplingParams = field(default_factory=SamplingParams)
    request_id: str = ""  # names the request's stats; seeds a sampled request that has no seed
    decoder_options: dict[str, Any] | None = None  # make_decoder options for this request; None = the engine's
    skip_tokens: int = 0  # resume: tokens an earlier attempt already delivered are decoded but not sent
    timeout_s: float | None = None  # deadline, from submission; past it the request stops (DeadlineExceeded)
    raw_prompt: bool = False  # send the prompt as is: no chat template, no BOS

    def __post_init__(self) -> None:
        if self.timeout_s is not None and self.timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.skip_tokens < 0:
            raise ValueError(f"skip_tokens must be >= 0, got {self.skip_tokens}")
        if self.skip_tokens > self.params.max_tokens:
            raise ValueError(f"skip_tokens ({self.skip_tokens}) exceeds max_tokens ({self.params.max_tokens})")
        if self.skip_tokens and self.params.temperature > 0 and self.params.seed is None and not self.request_id:
            raise ValueError("skip_tokens with temperature > 0 needs a seed or a request_id "
                             "(the resumed stream must repeat the first one)")

    def seeded_params(self) -> SamplingParams:
        """The params with the request id's seed when sampling without one (greedy needs none)."""
        if self.params.seed is not None or self.params.temperature == 0.0 or not self.request_id:
            return self.params
        return replace(self.params, seed=request_seed(self.request_id))


@dataclass(slots=True)
class Plan:
    """A validated request, ready to decode (TextEngine.prepare)."""

    request: TextRequest
    prompt_ids: list[int]
    params: SamplingParams  # seeded
    decoder: Decoder


@dataclass(slots=True)
class TextDelta:
    text: str  # new final text
    token_ids: list[int]  # new tokens sent (skipped ones are not)
    forwards: int  # the decoder's forward passes so far, skipped tokens' included
    finished: bool = False
    finish_reason: FinishReason | None = None


@dataclass(slots=True)
class Completion:
    prompt: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    forwards: int = 0
    finish_reason: FinishReason | None = None
    latency_s: float = 0.0

    @property
    def tokens_per_forward(self) -> float:
        return len(self.token_ids) / self.forwards if self.forwards else 0.0


@dataclass(slots=True)
class RequestStats:
    request_id: str
    forwards: int = 0  # forward passes run for it: one per batched step it took part in (cancelled ones' too)
    tokens: int = 0  # tokens sent (after skip_tokens)
    state: RequestState = "running"
    decoding: bool = False  # a step that includes this request is running right now
    cancelled: bool = False  # set on cancel: the request leaves before the engine's next step
    started: float = 0.0
    ended: float = 0.0
    kv_tokens: int = 0  # KV pool tokens it held at its peak (whole pages; x EngineConfig bytes per token)
