"""Tiny NextStep models for the tests: 64-token vocab, 32-d Qwen2 backbone with GQA, 32-d FM head."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from models.nextstep.config import NextStepConfig
from models.nextstep.model import NextStep
from models.nextstep.vae import ImageTokenizer, tiny_vae_config

TINY: dict[str, Any] = {
    "vocab_size": 64, "hidden_size": 32, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
    "intermediate_size": 64, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
    "boi": 60, "eoi": 61, "image_placeholder_id": 62, "image_area_id": 59, "pad_token_id_added": 63,
    "bos_token_id": 1, "eos_token_id": 2, "fm_head_dim": 32, "fm_head_layers": 2,
}


def tiny_config(**over: Any) -> NextStepConfig:
    return NextStepConfig(**{**TINY, **over})


def randomize_(module: torch.nn.Module, std: float = 0.3) -> None:
    """Default init leaves biases at zero and LayerNorm affines at 1/0; make every tensor matter."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or "norm" in name or "_ln" in name:
                p.add_(torch.randn_like(p) * std)


def tiny_model(seed: int = 0, **over: Any) -> NextStep:
    torch.manual_seed(seed)
    m = NextStep(tiny_config(**over))
    randomize_(m)
    return m.eval()


def encode(text: str) -> list[int]:
    """A stand-in tokenizer: one id per character, inside [3, 53) so it never hits a special id."""
    return [3 + ord(ch) % 50 for ch in text]


def tiny_vae(seed: int = 0) -> ImageTokenizer:
    torch.manual_seed(seed)
    return ImageTokenizer.from_config(tiny_vae_config()).eval()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    # The CI box shares its CPUs with training jobs; these models are too small to need more.
    torch.set_num_threads(1)
