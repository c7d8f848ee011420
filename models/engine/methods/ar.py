"""Autoregressive decoding for one sequence of the batched engine (models.decoders.ar.ARDecoder,
the reference): the prompt is the first window (causal mask, it may share a step with other
sequences' decode windows), then one token per step."""

from __future__ import annotations

import torch

from models.engine.methods.base import SeqState, Window

NEVER = 2.0  # no confidence is above it: AR commits its one sample whatever its confidence


class ARSeq(SeqState):
    threshold = NEVER

    def __init__(self, prompt: list[int], max_tokens: int, stop_ids: frozenset[int]) -> None:
        self.prompt, self.max_tokens, self.stop_ids = prompt, max_tokens, stop_ids
        self.generated = 0
        self.last: int | None = None
        self.cached = 0
        self.finished, self.finish_reason = False, None

    def window(self) -> Window | None:
        # prefix 0, blocks of 1: causal (each position its own block).
        if self.last is None:
            p = len(self.prompt)
            return Window(list(self.prompt), 0, p, [p - 1], 0, 1)
        return Window([self.last], self.cached, 1, [0], 0, 1)

    def sampling_logits(self, rows: torch.Tensor) -> torch.Tensor:
        return rows

    def advance(self, tokens: list[int], over: list[bool], conf: list[float], rows: torch.Tensor) -> list[int]:
        self.cached += len(self.prompt) if self.last is None else 1
        t = tokens[0]
        if t in self.stop_ids:
            self._finish("stop")
            return []
        self.generated += 1
        if self.generated == self.max_tokens:
            self._finish("length")
        self.last = t
        return [t]
