"""Vanilla LLaDA-style masked diffusion decoding (LLaDA `generate.py`).

The generation region (max_tokens MASKs) is decoded in semi-autoregressive blocks; each block
takes a fixed number of steps, and each step recomputes the whole sequence (no cache), predicts
every masked token of the block and unmasks the most confident ones (low-confidence remasking),
spreading the block's tokens evenly over its steps.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from models.decoders.base import DecodeEvent, PrefixEmitter, model_device
from models.sampling import SamplingParams, sample
from models.transformer import Transformer


@dataclass(slots=True)
class VanillaConfig:
    block_size: int = 32
    steps_per_block: int | None = None  # None = one token per step (LLaDA's reference setting)

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError("block_size must be positive")
        if self.steps_per_block is not None and not 1 <= self.steps_per_block <= self.block_size:
            raise ValueError("steps_per_block must be in [1, block_size]")


def transfer_schedule(n: int, steps: int) -> list[int]:
    """How many tokens each step unmasks: n split as evenly as possible, larger counts first."""
    base, extra = divmod(n, steps)
    return [base + (1 if i < extra else 0) for i in range(steps)]


class VanillaDecoder:
    name = "vanilla"

    def __init__(self, model: Transformer, cfg: VanillaConfig | None = None) -> None:
        self.model, self.cfg = model, cfg or VanillaConfig()
        mc = model.config
        if mc.mask_token_id is None:
            raise ValueError("vanilla diffusion decoding needs a model with mask_token_id")
        self.mask_id, self.stop_ids = mc.mask_token_id, mc.stop_ids

    @torch.inference_mode()
    def decode(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[DecodeEvent]:
        dev = model_device(self.model)
        p, n = len(prompt_ids), params.max_tokens
        x = torch.full((p + n,), self.mask_id, dtype=torch.long, device=dev)
        x[:p] = torch.tensor(prompt_ids, device=dev)
        gen = params.generator(dev)
        emit = PrefixEmitter(self.mask_id, self.stop_ids)
        forwards = 0
        shift = self.model.config.shift_logits
        for bstart in range(p, p + n, self.cfg.block_size):
            bend = min(bstart + self.cfg.block_size, p + n)
            steps = self.cfg.steps_per_block or (bend - bstart)
            for k in transfer_schedule(bend - bstart, min(steps, bend - bstart)):
                logits = self.model(x[None])[0]
                forwards += 1
                if shift:
                    logits = torch.cat([logits[:1], logits[:-1]])
                masked = (x[bstart:bend] == self.mask_id).nonzero().squeeze(-1) + bstart
                tokens, conf = sample(logits[masked], params, gen)
                top = conf.topk(min(k, len(masked))).indices
                x[masked[top]] = tokens[top]
                new = emit.take(x[p:])
                if emit.stopped:
                    yield DecodeEvent(new, forwards, True, "stop")
                    return
                if new:
                    yield DecodeEvent(new, forwards)
        yield DecodeEvent(emit.take(x[p:]), forwards, True, "length")
