"""Sampling parameters and the token sampler shared by every decoder."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch


def request_seed(request_id: str) -> int:
    """A seed fixed by the request (job) id, so a retried request that gave no seed replays the same
    samples, on any replica and any version of any engine (text and image alike)."""
    return int.from_bytes(hashlib.blake2b(request_id.encode(), digest_size=8).digest(), "big") >> 1


# Below this a temperature only divides logits into overflow (1e-38 makes every probability NaN) and
# samples what greedy decoding picks anyway; it is refused, not clamped, so the caller learns why.
# The gateway checks the same bound before a job is enqueued (services/gateway/validation.py).
MIN_TEMPERATURE = 0.01
MAX_TEMPERATURE = 10.0


@dataclass(slots=True)
class SamplingParams:
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    max_tokens: int = 128
    seed: int | None = None  # seeded runs are deterministic

    def __post_init__(self) -> None:
        if not (self.temperature == 0.0 or MIN_TEMPERATURE <= self.temperature <= MAX_TEMPERATURE):
            raise ValueError(f"temperature must be 0 (greedy) or in [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}], "
                             f"got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens <= 0:
            raise ValueError(f"max_tokens must be positive, got {self.max_tokens}")

    def generator(self, device: torch.device | str = "cpu") -> torch.Generator | None:
        if self.temperature == 0.0:
            return None
        g = torch.Generator(device=device)
        if self.seed is None:
            g.seed()
        else:
            g.manual_seed(self.seed)
        return g


def sample(logits: torch.Tensor, params: SamplingParams,
           gen: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens and their confidences (probability of the chosen token) for logits [N, V]."""
    logits = logits.float()
    if params.temperature == 0.0:
        probs = logits.softmax(-1)
        conf, tokens = probs.max(-1)
        return tokens, conf
    probs = (logits / params.temperature).softmax(-1)
    if params.top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the top token always stays).
        drop = (sorted_p.cumsum(-1) - sorted_p) >= params.top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    tokens = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    return tokens, probs.gather(-1, tokens[:, None]).squeeze(-1)
