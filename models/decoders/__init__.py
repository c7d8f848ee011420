"""Decoders over one model API; `make_decoder` picks one by name."""

from __future__ import annotations

from typing import Any

from models.decoders.ar import ARDecoder
from models.decoders.base import DecodeEvent, Decoder, FinishReason
from models.decoders.d2f import D2FConfig, D2FDecoder
from models.decoders.fast_dllm import FastDLLMConfig, FastDLLMDecoder
from models.decoders.vanilla import VanillaConfig, VanillaDecoder
from models.transformer import Transformer

METHODS = ("vanilla", "fast-dllm", "d2f", "ar")


def make_decoder(model: Transformer, method: str, **options: Any) -> Decoder:
    """A decoder for `method`; options are that method's config fields (e.g. tau_conf=0.9)."""
    if method == "vanilla":
        return VanillaDecoder(model, VanillaConfig(**options))
    if method == "fast-dllm":
        return FastDLLMDecoder(model, FastDLLMConfig(**options))
    if method == "d2f":
        return D2FDecoder(model, D2FConfig(**options))
    if method == "ar":
        if options:
            raise ValueError(f"the ar decoder takes no options, got {sorted(options)}")
        return ARDecoder(model)
    raise ValueError(f"unknown decoding method {method!r}; expected one of {METHODS}")


__all__ = ["METHODS", "ARDecoder", "D2FConfig", "D2FDecoder", "DecodeEvent", "Decoder", "FastDLLMConfig",
           "FastDLLMDecoder", "FinishReason", "VanillaConfig", "VanillaDecoder", "make_decoder"]
