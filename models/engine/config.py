"""The batched engine's limits: batch width, tokens per forward, the KV pool, the batch layout and
the load-adaptive D2F policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from models.engine.adaptive import AdaptivePolicy

Layout = Literal["packed", "padded"]
DEFAULT_SEQ_TOKENS = 4096  # the default pool's room per sequence, for models with more positions


@dataclass(slots=True)
class EngineConfig:
    max_num_seqs: int = 16  # sequences decoded together (the rest wait)
    max_num_batched_tokens: int = 8192  # window tokens in one forward (one sequence always runs)
    page_size: int = 16  # KV pool page, in tokens
    # KV pool size in tokens; None = room for max_num_seqs sequences of min(max_positions, DEFAULT_SEQ_TOKENS)
    # each (no preemption for the embedded models; a 128k-position model would not fit a GPU that way).
    # Smaller pools admit as many sequences and preempt (recompute) the newest when the pool runs out.
    kv_cache_tokens: int | None = None
    layout: Layout = "packed"  # windows back to back (linear layers see real tokens only), or padded to the longest
    adaptive: AdaptivePolicy = field(default_factory=AdaptivePolicy)

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens", "page_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_cache_tokens is not None and self.kv_cache_tokens < self.page_size:
            raise ValueError(f"kv_cache_tokens must hold at least one page ({self.page_size}), "
                             f"got {self.kv_cache_tokens}")
        if self.layout not in ("packed", "padded"):
            raise ValueError(f"layout must be packed or padded, got {self.layout!r}")

    def num_pages(self, max_positions: int) -> int:
        """Pages of the pool, the null page included."""
        per_seq = min(max_positions, DEFAULT_SEQ_TOKENS)
        tokens = self.kv_cache_tokens if self.kv_cache_tokens is not None else self.max_num_seqs * per_seq
        return -(-tokens // self.page_size) + 1
