"""What the batched engine asks of one sequence's decoding state: the window to forward next, and
what the sampled tokens of that forward commit.

A state holds one sequence's decoding in plain Python lists (the per-step work on tensors is done
once for the whole batch by the runner and the sampler); the engine never looks inside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from models.decoders import FinishReason
from models.decoders.base import first_stop

BIDIRECTIONAL = 1 << 40  # a mask prefix past any position: every key is block 0 (Fast-dLLM's full attention)


@dataclass(slots=True)
class Window:
    """One sequence's share of a batched forward."""

    tokens: list[int]  # token ids at positions start .. start + len - 1
    start: int  # the sequence's committed KV length: the window attends to [0, start) from the pool
    commit: int  # the first `commit` window tokens' K/V is kept after the forward
    logit_rows: list[int]  # window rows whose logits the forward returns (in this order)
    prefix: int  # the mask (attention.span_ids): positions < prefix are block 0 ...
    block: int  # ... then blocks of `block` positions; a query sees keys of its block and earlier ones

    @property
    def end(self) -> int:
        return self.start + len(self.tokens)


class SeqDecoder(Protocol):
    finished: bool
    finish_reason: FinishReason | None
    threshold: float  # a sampled token is "over" when its confidence is above this

    def window(self) -> Window | None:
        """The next forward's window; None once the sequence is finished without another forward."""
        ...

    def sampling_logits(self, rows: torch.Tensor) -> torch.Tensor:
        """The logits to sample [M, V], from the forward's logit rows [len(logit_rows), V]."""
        ...

    def advance(self, tokens: list[int], over: list[bool], conf: list[float], rows: torch.Tensor) -> list[int]:
        """Apply a forward's samples (one per sampling row); returns the tokens that became final."""
        ...


class SeqState:
    """What every method's state shares: finishing."""

    finished: bool
    finish_reason: FinishReason | None

    def _finish(self, reason: FinishReason) -> None:
        self.finished, self.finish_reason = True, reason


class DiffusionSeqState(SeqState):
    """A diffusion state over `x` (prompt then generation, MASK where undecided): emitting the
    generation's newly final prefix, and finishing at EOS."""

    x: list[int]
    p: int  # prompt length
    emitted: int  # generated tokens already final
    mask_id: int
    stop_ids: frozenset[int]  # the ids that end the generation (ModelConfig.stop_ids)

    def _take(self, end: int) -> list[int]:
        """The newly final prefix of the generation in x[:end]."""
        new, stopped = final_prefix(self.x, self.p + self.emitted, end, self.mask_id, self.stop_ids)
        if stopped:
            self._finish("stop")
        self.emitted += len(new)
        return new


def final_prefix(x: list[int], start: int, end: int, mask_id: int, stop_ids: frozenset[int]) -> tuple[list[int], bool]:
    """The tokens of x[start:end] before its first MASK (final: diffusion decoding never revises a
    committed token), cut at the first EOS; and whether that EOS ended the generation
    (models.decoders.base.PrefixEmitter's rule, on plain lists)."""
    new, i = [], start
    while i < end and x[i] != mask_id:
        new.append(x[i])
        i += 1
    stop = first_stop(new, stop_ids)
    if stop is not None:
        return new[:stop], True
    return new, False


def argmax(values: list[float]) -> int:
    """Index of the first maximum (torch.argmax's tie rule)."""
    best = 0
    for i in range(1, len(values)):
        if values[i] > values[best]:
            best = i
    return best
