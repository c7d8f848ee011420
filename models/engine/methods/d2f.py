"""D2F's block state machine for one sequence of the batched engine.

The same algorithm as models.decoders.d2f.D2FDecoder (the reference, which tests compare this to
token for token): blocks are appended at tau_add, fully activated at tau_act, tokens committed
above tau_conf (a fully activated block commits at least one), finished blocks re-encoded once
into the cache in order. Here the token state is a Python list and a step is split in two: the
engine asks for the window, runs one forward for the whole batch, and hands back the samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import torch

from models.decoders import D2FConfig
from models.decoders.d2f import Block, State
from models.engine.methods.base import DiffusionSeqState, Window, argmax


@dataclass(slots=True)
class Lean:
    """Load-adaptive limits on D2F's speculation (models.engine.adaptive), applied per step."""

    tau_add: float = 0.0  # append a block only when the last one is at least this decoded (max with the config's)
    max_active: int = 0  # at most this many blocks in flight (0 = no limit)


class D2FSeq(DiffusionSeqState):
    def __init__(self, prompt: list[int], max_tokens: int, cfg: D2FConfig, mask_id: int, stop_ids: frozenset[int],
                 shift: bool) -> None:
        self.cfg, self.mask_id, self.stop_ids, self.shift = cfg, mask_id, stop_ids, shift
        self.p, self.n = len(prompt), max_tokens
        self.x = [*prompt, *([mask_id] * max_tokens)]
        self.blocks = [Block(0, self.p, State.TO_CACHE, 0, True)]
        self.length = self.p  # positions [0, length) are allocated to blocks
        self.cached = 0  # committed KV length
        self.eos = False
        self.emitted = 0  # generated tokens already final
        self.carry: torch.Tensor | None = None  # logits of the last cached position (shifted models)
        self.threshold = cfg.tau_conf
        self.lean = Lean()
        self.finished, self.finish_reason = False, None
        self._live: list[Block] = []
        self._spans: list[tuple[Block, list[int]]] = []
        self._head = False  # the window's first position is masked: it is predicted by the carry
        self._commit = 0

    def window(self) -> Window | None:
        cfg, p, n, blocks = self.cfg, self.p, self.n, self.blocks
        last = blocks[-1]
        in_flight = sum(1 for b in blocks if b.state is State.ACTIVE)
        if (self.length < p + n and not self.eos and last.decoded_ratio >= max(cfg.tau_add, self.lean.tau_add)
                and not (self.lean.max_active and in_flight >= self.lean.max_active)):
            end = min(self.length + cfg.block_size, p + n)  # the last block may be short, never empty
            blocks.append(Block(self.length, end, State.ACTIVE, end - self.length))
            self.length = end
        for prev, b in pairwise(blocks):
            if b.state is State.ACTIVE and not b.full and prev.decoded_ratio >= cfg.tau_act:
                b.full = True
        live = [b for b in blocks if b.state is not State.IN_CACHE]
        if not any(b.state is State.ACTIVE for b in live) and (self.length == p + n or self.eos):
            self._finish("length")
            return None
        start, x, mask = self.cached, self.x, self.mask_id
        self._live = live
        self._commit = commit = sum(b.end - b.start for b in live if b.state is State.TO_CACHE)
        self._spans = [(b, [j for j in range(b.start, b.end) if x[j] == mask])
                       for b in live if b.state is State.ACTIVE and b.masked]
        pos = [j for _, span in self._spans for j in span]
        if self.shift:  # token j is read from the logits at j - 1; the window's first from the carry
            self._head = bool(pos) and pos[0] == start
            rows = [j - 1 - start for j in pos[1:]] if self._head else [j - 1 - start for j in pos]
            if commit:
                rows.append(commit - 1)  # the new carry: the last cached position's logits
        else:
            rows = [j - start for j in pos]
        # The window's mask: the prompt is block 0, then blocks of block_size (models.attention).
        return Window(x[start:self.length], start, commit, rows, p, cfg.block_size)

    def sampling_logits(self, rows: torch.Tensor) -> torch.Tensor:
        if not self.shift:
            return rows
        body = rows[:-1] if self._commit else rows
        if self._head:
            assert self.carry is not None, "a masked window start always follows a committed block"
            body = torch.cat([self.carry[None], body])
        return body

    def advance(self, tokens: list[int], over: list[bool], conf: list[float], rows: torch.Tensor) -> list[int]:
        if self.shift and self._commit:
            self.carry = rows[-1].clone()
        self.cached += self._commit
        for b in self._live:
            if b.state is State.TO_CACHE:
                b.state = State.IN_CACHE
        x, off = self.x, 0
        for b, span in self._spans:
            k = len(span)
            chosen = [i for i in range(k) if over[off + i]]
            if not chosen and b.full:
                chosen = [argmax(conf[off : off + k])]
            for i in chosen:
                t = tokens[off + i]
                x[span[i]] = t
                self.eos = self.eos or t in self.stop_ids
            b.masked -= len(chosen)
            off += k
        done_before = True
        for b in self._live:
            if b.state is State.ACTIVE and b.masked == 0 and done_before:
                b.state = State.TO_CACHE
            done_before = done_before and b.state is not State.ACTIVE
        return self._take(self.length)

