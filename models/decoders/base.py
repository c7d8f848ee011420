"""What every decoder shares: the event type it streams and the final-prefix emitter."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from models.sampling import SamplingParams
from models.transformer import Transformer

FinishReason = Literal["stop", "length"]


@dataclass(slots=True)
class DecodeEvent:
    token_ids: list[int]  # tokens that just became final, in order (EOS never included)
    forwards: int  # model forward passes so far
    finished: bool = False
    finish_reason: FinishReason | None = None


class Decoder(Protocol):
    name: str

    def decode(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[DecodeEvent]:
        """Stream final tokens of one generation; the last event has finished=True."""
        ...


class PrefixEmitter:
    """Streams a generation region that is unmasked in place, in any order.

    A token is final once it and every token before it are decoded (diffusion decoders never
    revise a decoded token). Everything from the first EOS on is dropped, and the generation is
    over the moment that EOS becomes part of the final prefix.
    """

    def __init__(self, mask_id: int | None, stop_ids: frozenset[int]) -> None:
        self.mask_id, self.stop_ids = mask_id, stop_ids
        self.emitted = 0
        self.stopped = False

    def take(self, gen: torch.Tensor) -> list[int]:
        """New final tokens of `gen` (the whole generation region so far)."""
        if self.stopped:
            return []
        rest = gen[self.emitted:]
        if self.mask_id is not None:
            holes = (rest == self.mask_id).nonzero()
            if len(holes):
                rest = rest[: int(holes[0])]
        new = rest.tolist()
        stop = first_stop(new, self.stop_ids)
        if stop is not None:
            new = new[:stop]
            self.stopped = True
        self.emitted += len(new)
        return new


def first_stop(tokens: list[int], stop_ids: frozenset[int]) -> int | None:
    """Index of the first token of `tokens` that ends a generation, None if there is none."""
    if stop_ids:
        for i, t in enumerate(tokens):
            if t in stop_ids:
                return i
    return None


def model_device(model: Transformer) -> torch.device:
    return model.embed.weight.device
