"""Fixtures for the model unit tests: tiny random models of each layout."""

from __future__ import annotations

import pytest
import torch

from models.config import ModelConfig
from models.transformer import Transformer

VOCAB, MASK, EOS = 48, 47, 0


def tiny(layout: str, seed: int = 0, **over: object) -> Transformer:
    kw: dict = {"vocab_size": VOCAB, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4,
                "intermediate_size": 64, "max_position_embeddings": 256, "eos_token_id": EOS}
    if layout == "dream":
        kw.update(num_kv_heads=2, qkv_bias=True)
    if layout == "qwen2":
        kw.update(qkv_bias=True)
    else:
        kw.update(mask_token_id=MASK)
    kw.update(over)
    torch.manual_seed(seed)
    m = Transformer(ModelConfig(layout=layout, **kw))
    if layout == "dream":  # random init leaves biases at small values; make them matter
        for layer in m.layers:
            for proj in (layer.q_proj, layer.k_proj, layer.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    return m.eval()


@pytest.fixture(params=["llada", "dream"])
def diffusion_model(request: pytest.FixtureRequest) -> Transformer:
    return tiny(request.param)


def bias_logit(model: Transformer, token: int, value: float) -> Transformer:
    """Add `value` to one token's logit everywhere (forces or forbids e.g. EOS)."""

    def hook(_m: torch.nn.Module, _i: object, out: torch.Tensor) -> torch.Tensor:
        out = out.clone()
        out[..., token] += value
        return out

    model.lm_head.register_forward_hook(hook)
    return model
