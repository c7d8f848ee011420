"""Fast-dLLM decoding for one sequence of the batched engine (models.decoders.fast_dllm, the
reference): per block, one full bidirectional forward that refreshes the prefix cache [0, block
start), then forwards of [block start, end of generation) against it until the block is decoded."""

from __future__ import annotations

import torch

from models.decoders import FastDLLMConfig
from models.engine.methods.base import BIDIRECTIONAL, DiffusionSeqState, Window, argmax


class FastDLLMSeq(DiffusionSeqState):
    def __init__(self, prompt: list[int], max_tokens: int, cfg: FastDLLMConfig, mask_id: int, stop_ids: frozenset[int],
                 shift: bool) -> None:
        self.cfg, self.mask_id, self.stop_ids, self.shift = cfg, mask_id, stop_ids, shift
        self.p, self.total = len(prompt), len(prompt) + max_tokens
        self.x = [*prompt, *([mask_id] * max_tokens)]
        self.bstart = self.p
        self.first = True  # the next forward is the block's full refresh
        self.cached = 0
        self.emitted = 0
        self.carry: torch.Tensor | None = None
        self.threshold = cfg.threshold
        self.finished, self.finish_reason = False, None
        self._masked: list[int] = []

    def window(self) -> Window | None:
        x, mask = self.x, self.mask_id
        while self.bstart < self.total:
            bend = min(self.bstart + self.cfg.block_size, self.total)
            self._masked = [j for j in range(self.bstart, bend) if x[j] == mask]
            if self._masked:
                break
            self.bstart, self.first = bend, True
        else:
            self._finish("length")
            return None
        b, pos = self.bstart, self._masked
        if self.first:  # the whole sequence from 0; keep [0, block start) as the block's cache
            rows = [j - 1 for j in pos] + [b - 1] if self.shift else list(pos)
            return Window(x[: self.total], 0, b, rows, BIDIRECTIONAL, 1)
        # Shifted: the block's first token is read from the carried logits of position b - 1.
        rows = [j - 1 - b for j in pos if j > b] if self.shift else [j - b for j in pos]
        return Window(x[b : self.total], b, 0, rows, BIDIRECTIONAL, 1)

    def sampling_logits(self, rows: torch.Tensor) -> torch.Tensor:
        if not self.shift:
            return rows
        if self.first:
            self.carry = rows[-1].clone()
            return rows[:-1]
        if self._masked[0] == self.bstart:
            assert self.carry is not None
            return torch.cat([self.carry[None], rows])
        return rows

    def advance(self, tokens: list[int], over: list[bool], conf: list[float], rows: torch.Tensor) -> list[int]:
        if self.first:
            self.cached, self.first = self.bstart, False
        chosen = [i for i in range(len(tokens)) if over[i]] or [argmax(conf)]
        for i in chosen:
            self.x[self._masked[i]] = tokens[i]
        return self._take(self.total)
