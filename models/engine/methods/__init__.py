"""Per-sequence decoding states of the batched engine, one per method, and `make_state` to pick one."""

from __future__ import annotations

from models.decoders import D2FDecoder, Decoder, FastDLLMDecoder
from models.engine.methods.ar import ARSeq
from models.engine.methods.base import SeqDecoder, Window
from models.engine.methods.d2f import D2FSeq, Lean
from models.engine.methods.fast_dllm import FastDLLMSeq
from models.engine.methods.solo import SoloSeq
from models.sampling import SamplingParams
from models.transformer import Transformer


def make_state(model: Transformer, decoder: Decoder, prompt: list[int],
               params: SamplingParams) -> SeqDecoder | SoloSeq:
    """The batched state for a request's decoder (its config holds the request's thresholds);
    vanilla and any decoder without one run solo."""
    mc = model.config
    if isinstance(decoder, D2FDecoder):
        assert mc.mask_token_id is not None
        return D2FSeq(prompt, decoder.cfg.gen_tokens(params.max_tokens), decoder.cfg, mc.mask_token_id,
                      mc.stop_ids, mc.shift_logits)
    if isinstance(decoder, FastDLLMDecoder):
        assert mc.mask_token_id is not None
        return FastDLLMSeq(prompt, params.max_tokens, decoder.cfg, mc.mask_token_id, mc.stop_ids,
                           mc.shift_logits)
    if decoder.name == "ar":
        return ARSeq(prompt, params.max_tokens, mc.stop_ids)
    return SoloSeq(decoder, prompt, params)


__all__ = ["ARSeq", "D2FSeq", "FastDLLMSeq", "Lean", "SeqDecoder", "SoloSeq", "Window", "make_state"]
