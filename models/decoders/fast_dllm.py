"""Fast-dLLM decoding: confidence-threshold parallel decoding with an (approximate) prefix cache.

Runs on the original bidirectional model. At each block, one full forward refreshes the KV of
everything before the block; later steps forward only [block start, end) against that cache.
The cache is approximate (bidirectional attention lets later tokens change earlier states),
which is why Fast-dLLM refreshes it once per block. Every step commits each masked token of the
current block whose confidence exceeds the threshold, and always at least the most confident one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from models.decoders.base import DecodeEvent, PrefixEmitter, model_device
from models.sampling import SamplingParams, sample
from models.transformer import Transformer


@dataclass(slots=True)
class FastDLLMConfig:
    block_size: int = 32
    threshold: float = 0.9

    def __post_init__(self) -> None:
        if self.block_size <= 0:
            raise ValueError("block_size must be positive")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError("threshold must be in [0, 1]")


def commit_confident(conf: torch.Tensor, threshold: float, force_one: bool) -> torch.Tensor:
    """Indices of the tokens to commit: all above threshold, else (if forced) the top one."""
    chosen = (conf > threshold).nonzero().squeeze(-1)
    if force_one and len(chosen) == 0 and len(conf):
        chosen = conf.argmax().reshape(1)
    return chosen


class FastDLLMDecoder:
    name = "fast-dllm"

    def __init__(self, model: Transformer, cfg: FastDLLMConfig | None = None) -> None:
        self.model, self.cfg = model, cfg or FastDLLMConfig()
        mc = model.config
        if mc.mask_token_id is None:
            raise ValueError("Fast-dLLM decoding needs a model with mask_token_id")
        self.mask_id, self.stop_ids = mc.mask_token_id, mc.stop_ids

    @torch.inference_mode()
    def decode(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[DecodeEvent]:
        dev = model_device(self.model)
        p, n = len(prompt_ids), params.max_tokens
        x = torch.full((p + n,), self.mask_id, dtype=torch.long, device=dev)
        x[:p] = torch.tensor(prompt_ids, device=dev)
        gen = params.generator(dev)
        emit = PrefixEmitter(self.mask_id, self.stop_ids)
        cache = self.model.new_cache(1, p + n)
        shift = self.model.config.shift_logits
        forwards = 0
        for bstart in range(p, p + n, self.cfg.block_size):
            bend = min(bstart + self.cfg.block_size, p + n)
            cache.truncate(0)
            first = True
            while bool((x[bstart:bend] == self.mask_id).any()):
                if first:  # full forward; keep the prefix [0, bstart) as the block's cache
                    logits = self.model(x[None], cache=cache, commit=bstart)[0]
                    logits = logits[bstart - 1 : bend - 1] if shift else logits[bstart:bend]
                    carry = logits[:1]
                    first = False
                else:
                    logits = self.model(x[None, bstart:], cache=cache)[0]
                    logits = torch.cat([carry, logits[: bend - bstart - 1]]) if shift else logits[: bend - bstart]
                forwards += 1
                masked = (x[bstart:bend] == self.mask_id).nonzero().squeeze(-1)
                tokens, conf = sample(logits[masked], params, gen)
                chosen = commit_confident(conf, self.cfg.threshold, force_one=True)
                x[bstart + masked[chosen]] = tokens[chosen]
                new = emit.take(x[p:])
                if emit.stopped:
                    yield DecodeEvent(new, forwards, True, "stop")
                    return
                if new:
                    yield DecodeEvent(new, forwards)
        yield DecodeEvent(emit.take(x[p:]), forwards, True, "length")
