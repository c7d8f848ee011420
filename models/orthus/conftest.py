"""Tiny Orthus models and tiny HF Chameleon checkpoints for the Orthus tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from models.orthus.config import OrthusConfig
from models.orthus.model import Orthus

torch.set_num_threads(1)  # the tests are tiny; do not compete with other jobs for cores

# Tiny token layout: image rows 4..19 (16 codes), BOI/EOI/sep/<image> chosen inside a 64-token vocab.
TINY: dict[str, Any] = dict(
    vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=4, num_kv_heads=4,
    max_position_embeddings=256, image_token_id=30, boi_token_id=21, eoi_token_id=20, sep_token_id=29,
    image_token_offset=4, codebook_size=16, latent_dim=8, image_seq_length=4, head_width=32,
)


def tiny_config(**over: Any) -> OrthusConfig:
    return OrthusConfig(**{**TINY, **over})


def randomize_norms(model: torch.nn.Module, seed: int) -> None:
    """Give every norm/bias a non-trivial value so that a wrong norm shape or placement shows."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "layernorm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))


def tiny_orthus(seed: int = 0, **over: Any) -> Orthus:
    torch.manual_seed(seed)
    model = Orthus(tiny_config(**over))
    randomize_norms(model, seed + 1)
    return model.eval()


def text_ids(n: int, seed: int, cfg: OrthusConfig | None = None) -> list[int]:
    """Random ordinary text ids (no image rows, no special tokens)."""
    cfg = cfg or tiny_config()
    gen = torch.Generator().manual_seed(seed)
    lo = cfg.image_token_offset + cfg.codebook_size
    specials = {cfg.image_token_id, cfg.boi_token_id, cfg.eoi_token_id, cfg.sep_token_id}
    pool = [t for t in range(lo, cfg.vocab_size) if t not in specials]
    return [pool[i] for i in torch.randint(len(pool), (n,), generator=gen).tolist()]


def make_hf_chameleon(out: Path, seed: int = 0, num_kv_heads: int = 4) -> Any:
    """A random tiny `ChameleonForConditionalGeneration`, saved with save_pretrained to `out`."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    def img_name(i: int) -> str:  # Chameleon's vocabulary_map spelling of image code i
        return "IMGIMG" + "".join(chr(ord("A") + int(c)) for c in str(i)) + "Z"

    vmap = {"<image>": 30, "<racm3:break>": 21, "<eoss>": 20, **{img_name(i): 4 + i for i in range(16)}}
    vq = dict(embed_dim=8, num_embeddings=16, latent_channels=32, resolution=32, in_channels=3, base_channels=32,
              channel_multiplier=[1, 2], num_res_blocks=1, attn_resolutions=[])
    cfg = ChameleonConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                          num_attention_heads=4, num_key_value_heads=num_kv_heads, max_position_embeddings=256,
                          vq_config=vq, vocabulary_map=vmap, attn_implementation="eager",
                          sep_token_id=29)  # Orthus-only key, kept by the config as an extra attribute
    torch.manual_seed(seed)
    hf = ChameleonForConditionalGeneration(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # HF initialises with std 0.02 and unit norms: too small to test anything
        for name, p in hf.named_parameters():
            if name.startswith("model.vqmodel"):
                continue
            if "norm" in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))
            else:
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    hf.save_pretrained(str(out))
    return hf.eval()


@pytest.fixture
def model() -> Orthus:
    return tiny_orthus()
