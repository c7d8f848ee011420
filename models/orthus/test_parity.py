"""(a) Our Chameleon backbone, loaded by our loader, against transformers' Chameleon on the same ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.orthus.backbone import causal_mask
from models.orthus.checkpoint import load_orthus, read_config
from models.orthus.config import OrthusConfig
from models.orthus.conftest import make_hf_chameleon

TOL = 1e-4


def _ids(batch: int, length: int, seed: int) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kv_heads", [4, 2])
def test_logits_match_transformers(tmp_path: Path, kv_heads: int) -> None:
    hf = make_hf_chameleon(tmp_path, seed=kv_heads, num_kv_heads=kv_heads)
    ours = load_orthus(tmp_path, init_missing=True)
    ids = _ids(2, 13, seed=1)
    with torch.no_grad():
        ref_h = hf.model(input_ids=ids).last_hidden_state
        ref = hf.lm_head(ref_h)
        h, logits = ours(ids)
    assert ref.abs().max() > 1.0  # the comparison is not between two near-zero tensors
    assert (h - ref_h).abs().max().item() < TOL
    assert (logits - ref).abs().max().item() < TOL
    # ChameleonForConditionalGeneration additionally masks the discrete image-token columns.
    with torch.no_grad():
        full = hf(input_ids=ids).logits
    keep = torch.ones(64, dtype=torch.bool)
    keep[4:20] = False
    assert (logits[..., keep] - full[..., keep]).abs().max().item() < TOL


def test_left_padded_rows_match_transformers(tmp_path: Path) -> None:
    hf = make_hf_chameleon(tmp_path, seed=3)
    ours = load_orthus(tmp_path, init_missing=True)
    ids = _ids(2, 10, seed=2)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[1, :4] = False  # row 1 is 4 tokens shorter, padded on the left
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = hf.lm_head(hf.model(input_ids=ids, attention_mask=valid.long(), position_ids=positions).last_hidden_state)
        _, logits = ours(ids, positions=positions, mask=causal_mask(valid, 0, 10))
    assert (logits - ref)[valid].abs().max().item() < TOL


def test_qk_norm_is_per_head(tmp_path: Path) -> None:
    """The loaded q/k norms keep one gamma/beta per head ([heads, head_dim]), as Chameleon stores them."""
    hf = make_hf_chameleon(tmp_path, seed=5, num_kv_heads=2)
    ours = load_orthus(tmp_path, init_missing=True)
    layer = ours.backbone.layers[1]
    assert layer.q_norm.weight.shape == (4, 8) and layer.k_norm.bias.shape == (2, 8)
    assert torch.equal(layer.q_norm.weight, hf.model.layers[1].self_attn.q_norm.weight)


def test_config_reads_chameleon_keys(tmp_path: Path) -> None:
    make_hf_chameleon(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    cfg = read_config(tmp_path)
    assert (cfg.num_layers, cfg.num_heads, cfg.hidden_size, cfg.vocab_size) == (2, 4, 32, 64)
    assert (cfg.image_token_id, cfg.boi_token_id, cfg.eoi_token_id) == (30, 21, 20)  # via vocabulary_map
    assert (cfg.codebook_size, cfg.latent_dim) == (16, 8)  # via vq_config
    written = cfg.to_hf()
    for key, value in raw.items():  # every original key comes back with its value
        if key != "vq_config":
            assert written[key] == value, key
    assert {k: v for k, v in written["vq_config"].items() if k in raw["vq_config"]} == raw["vq_config"]
    assert OrthusConfig.from_hf(written) == cfg


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        OrthusConfig(hidden_size=100, num_heads=3)
    with pytest.raises(ValueError):
        OrthusConfig(vocab_size=8000)  # image rows 4..8195 would not fit
    with pytest.raises(ValueError):
        OrthusConfig.from_hf({"model_type": "chameleon", "vocab_size": 65536, "hidden_size": 4096,
                              "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
                              "swin_norm": True})
    assert OrthusConfig().head_dim == 128
