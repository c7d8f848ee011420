"""The batched engine's limits: batch width, tokens per forward, the KV pool, the batch layout and
the load-adaptive D2F policy."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from models.engine.adaptive import AdaptivePolicy

Layout = Literal["packed", "padded"]
KVLayout = Literal["auto", "paged", "slots"]
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
    # The pool's layout (models.kv_cache.PagedKVCache): "slots" gives every running sequence a contiguous slot
    # of the model's positions (up to DEFAULT_SEQ_TOKENS), read by attention as a view; "paged" scatters its
    # pages over the pool and gathers them every layer. "auto": slots on a CPU when the pool holds
    # max_num_seqs whole sequences anyway (the default pool, no preemption), else paged.
    kv_layout: KVLayout = "auto"
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
        if self.kv_layout not in ("auto", "paged", "slots"):
            raise ValueError(f"kv_layout must be auto, paged or slots, got {self.kv_layout!r}")

    def num_pages(self, max_positions: int) -> int:
        """Pages of the pool, the null page included."""
        per_seq = min(max_positions, DEFAULT_SEQ_TOKENS)
        tokens = self.kv_cache_tokens if self.kv_cache_tokens is not None else self.max_num_seqs * per_seq
        return -(-tokens // self.page_size) + 1

    def slot_pages(self, max_positions: int, device_type: str) -> int:
        """Pages of one contiguous slot, or 0 for a paged pool (see kv_layout)."""
        pages = -(-min(max_positions, DEFAULT_SEQ_TOKENS) // self.page_size)
        whole = self.kv_cache_tokens is None or self.kv_cache_tokens >= self.max_num_seqs * pages * self.page_size
        if self.kv_layout == "slots":
            if not whole:
                raise ValueError(f"kv_layout slots needs kv_cache_tokens >= max_num_seqs x {pages * self.page_size}")
            return pages
        auto = self.kv_layout == "auto" and device_type == "cpu" and max_positions <= DEFAULT_SEQ_TOKENS
        return pages if auto and whole else 0
