"""Autoregressive decoding with a KV cache: the baseline D2F is measured against."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from models.attention import causal_ids, mask_from_ids
from models.decoders.base import DecodeEvent, model_device
from models.sampling import SamplingParams, sample
from models.transformer import Transformer


class ARDecoder:
    name = "ar"

    def __init__(self, model: Transformer) -> None:
        if model.config.is_diffusion:
            raise ValueError(f"AR decoding needs a causal LM, got a {model.config.layout} model")
        self.model, self.stop_ids = model, model.config.stop_ids

    @torch.inference_mode()
    def decode(self, prompt_ids: list[int], params: SamplingParams) -> Iterator[DecodeEvent]:
        dev = model_device(self.model)
        p = len(prompt_ids)
        cache = self.model.new_cache(1, p + params.max_tokens)
        gen = params.generator(dev)
        ids = causal_ids(p, dev)
        logits = self.model(torch.tensor([prompt_ids], device=dev), mask=mask_from_ids(ids, ids),
                            cache=cache, commit=p, last_only=True)[0]
        forwards = 1
        for i in range(params.max_tokens):
            tok, _ = sample(logits, params, gen)
            t = int(tok[0])
            if t in self.stop_ids:
                yield DecodeEvent([], forwards, True, "stop")
                return
            if i == params.max_tokens - 1:
                break
            yield DecodeEvent([t], forwards)
            # A single query sees the whole prefix, so no mask is needed past the prompt.
            logits = self.model(tok[None], cache=cache, commit=1, last_only=True)[0]
            forwards += 1
        yield DecodeEvent([t], forwards, True, "length")
