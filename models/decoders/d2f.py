"""D2F pipelined parallel decoding (paper Alg. 2; reference notes ../shared/reference/d2f.md §3.6).

Several blocks are in flight at once. The prompt is block 0, already complete. A new all-MASK
block is appended when the last block is at least tau_add decoded (until EOS or max_tokens);
a block is fully activated once its predecessor is at least tau_act decoded, otherwise it is
semi-activated. Each step commits, in every active block, the masked tokens with confidence
> tau_conf; a fully-activated block commits at least its most confident token. A block whose
masks are all filled, with every earlier block done, is re-encoded once more with its final
tokens and its K/V is written to the cache (TO_CACHE -> IN_CACHE); blocks retire in order.

Every forward uses the block-causal mask the student was trained with, so the cached prefix is
exact (unlike the reference engine's unmasked decode path, d2f.md §1.3). For shifted
(Dream) models the logits of the last cached position are carried into the next window (fixing
the engine bug of d2f.md §4.6.2).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from itertools import pairwise

import torch

from models.attention import block_ids, window_mask
from models.decoders.base import DecodeEvent, PrefixEmitter, model_device
from models.decoders.fast_dllm import commit_confident
from models.sampling import SamplingParams, sample
from models.transformer import Transformer


@dataclass(slots=True)
class D2FConfig:
    block_size: int = 32
    tau_add: float = 0.1  # append a new block when the last is this fraction decoded
    tau_act: float = 0.95  # fully activate a block when its predecessor is this fraction decoded
    tau_conf: float = 0.9  # commit tokens more confident than this
    # max_tokens not a multiple of block_size: Tessera decodes a short last block, so a request gets
    # up to exactly max_tokens tokens. The D2F reference (HF eval loop, d2f.md §3.5) only ever adds
    # max_new_tokens // block_size whole blocks; whole_blocks=True decodes exactly that, for
    # reference-exact outputs. Greedy, the whole blocks decode identically either way (under the
    # block-causal mask no block sees a later one): the default's output starts with the reference's.
    whole_blocks: bool = False

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError("block_size must be positive")
        for name in ("tau_add", "tau_act", "tau_conf"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")

    def gen_tokens(self, max_tokens: int) -> int:
        """The positions a request of max_tokens decodes (see whole_blocks)."""
        if not self.whole_blocks:
            return max_tokens
        if max_tokens < self.block_size:
            raise ValueError(f"whole_blocks decoding needs max_tokens >= block_size ({self.block_size}), "
                             f"got {max_tokens}")
        return max_tokens - max_tokens % self.block_size


class State(Enum):
    ACTIVE = 1
    TO_CACHE = 2
    IN_CACHE = 3


@dataclass(slots=True)
class Block:
    start: int
    end: int
    state: State
    masked: int  # MASK tokens left
    full: bool = False  # fully activated

    @property
    def decoded_ratio(self) -> float:
        return 1.0 - self.masked / (self.end - self.start)


class D2FDecoder:
    name = "d2f"

    def __init__(self, model: Transformer, cfg: D2FConfig | None = None) -> None:
        self.model, self.cfg = model, cfg or D2FConfig()
        mc = model.config
        if mc.mask_token_id is None:
            raise ValueError("D2F decoding needs a model with mask_token_id")
        self.mask_id, self.stop_ids = mc.mask_token_id, mc.stop_ids
        self._stops = torch.tensor(sorted(self.stop_ids), dtype=torch.long, device=model_device(model))

    @torch.inference_mode()
    def decode(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[DecodeEvent]:
        cfg, dev = self.cfg, model_device(self.model)
        p, n = len(prompt_ids), cfg.gen_tokens(params.max_tokens)
        x = torch.full((p + n,), self.mask_id, dtype=torch.long, device=dev)
        x[:p] = torch.tensor(prompt_ids, device=dev)
        ids = block_ids(p, p + n, cfg.block_size, dev)
        cache = self.model.new_cache(1, p + n)
        gen = params.generator(dev)
        emit = PrefixEmitter(self.mask_id, self.stop_ids)
        shift = self.model.config.shift_logits
        carry: torch.Tensor | None = None  # logits of the last cached position (shifted models)
        blocks = [Block(0, p, State.TO_CACHE, 0, True)]
        length, eos, forwards = p, False, 0
        while True:
            last = blocks[-1]
            if length < p + n and not eos and last.decoded_ratio >= cfg.tau_add:
                end = min(length + cfg.block_size, p + n)  # the last block may be short, never empty
                blocks.append(Block(length, end, State.ACTIVE, end - length))
                length = end
            for prev, b in pairwise(blocks):
                if b.state is State.ACTIVE and not b.full and prev.decoded_ratio >= cfg.tau_act:
                    b.full = True
            live = [b for b in blocks if b.state is not State.IN_CACHE]
            if not any(b.state is State.ACTIVE for b in live) and (length == p + n or eos):
                break
            start = cache.length
            commit = sum(b.end - b.start for b in live if b.state is State.TO_CACHE)
            logits = self.model(x[None, start:length], mask=window_mask(ids, start, length),
                                cache=cache, commit=commit)[0]
            forwards += 1
            if shift:
                head = carry if carry is not None else logits[:1]
                if commit:
                    carry = logits[commit - 1 : commit]
                logits = torch.cat([head, logits[:-1]])
            for b in live:
                if b.state is State.TO_CACHE:
                    b.state = State.IN_CACHE
            self._unmask(x, logits, start, [b for b in live if b.state is State.ACTIVE and b.masked],
                         params, gen)
            eos = eos or self._saw_eos(x, p, length)
            done_before = True
            for b in live:
                if b.state is State.ACTIVE and b.masked == 0 and done_before:
                    b.state = State.TO_CACHE
                done_before = done_before and b.state is not State.ACTIVE
            new = emit.take(x[p:length])
            if emit.stopped:
                yield DecodeEvent(new, forwards, True, "stop")
                return
            if new:
                yield DecodeEvent(new, forwards)
        yield DecodeEvent(emit.take(x[p:length]), forwards, True, "length")

    def _unmask(self, x: torch.Tensor, logits: torch.Tensor, start: int, active: list[Block],
                params: SamplingParams, gen: torch.Generator | None) -> None:
        """One parallel decoding step over all active blocks (one sampler call for all of them)."""
        if not active:
            return
        spans = [(x[b.start : b.end] == self.mask_id).nonzero().squeeze(-1) + b.start for b in active]
        pos = torch.cat(spans)
        tokens, conf = sample(logits[pos - start], params, gen)
        offset = 0
        for b, span in zip(active, spans, strict=True):
            k = len(span)
            chosen = commit_confident(conf[offset : offset + k], self.cfg.tau_conf, force_one=b.full)
            x[span[chosen]] = tokens[offset : offset + k][chosen]
            b.masked -= len(chosen)
            offset += k

    def _saw_eos(self, x: torch.Tensor, p: int, length: int) -> bool:
        return bool(self.stop_ids) and bool(torch.isin(x[p:length], self._stops).any())
