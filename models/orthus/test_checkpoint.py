"""(e) save -> load is exact, in the single-file and sharded layouts, and keeps the checkpoint's names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.orthus.checkpoint import DEFAULT_HEAD_PREFIX, load_orthus, save_orthus
from models.orthus.conftest import make_hf_chameleon, tiny_orthus
from models.orthus.model import Orthus
from models.orthus.prompt import build_prompt


def _assert_same(a: Orthus, b: Orthus) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    assert a.config.to_hf() == b.config.to_hf()  # a fresh config gains only the default keys it writes
    assert a.passthrough.keys() == b.passthrough.keys()
    assert all(torch.equal(a.passthrough[k], b.passthrough[k]) for k in a.passthrough)


@pytest.mark.parametrize("shard", [None, 4096])
def test_round_trip_is_exact(tmp_path: Path, shard: int | None) -> None:
    model = tiny_orthus(seed=3)
    save_orthus(model, tmp_path, max_shard_bytes=shard)
    if shard is not None:
        index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) > 1
    loaded = load_orthus(tmp_path)
    _assert_same(model, loaded)
    ids = torch.tensor([[1, 40, 41, 42]])
    with torch.no_grad():
        assert torch.equal(model(ids)[1], loaded(ids)[1])


def test_checkpoint_names(tmp_path: Path) -> None:
    save_orthus(tiny_orthus(), tmp_path)
    names = set(load_file(str(tmp_path / "model.safetensors")))
    for n in ("model.embed_tokens.weight", "lm_head.weight", "model.norm.weight", "model.codebook_in.weight",
              "model.layers.1.self_attn.q_norm.bias", "model.layers.0.input_layernorm.weight",
              "model.layers.0.mlp.gate_proj.weight", DEFAULT_HEAD_PREFIX + "cond_embed.weight",
              DEFAULT_HEAD_PREFIX + "res_blocks.2.adaLN_modulation.1.weight"):
        assert n in names, n


def test_hf_checkpoint_round_trip_keeps_everything(tmp_path: Path) -> None:
    """A Chameleon checkpoint loads (Orthus parts initialised), and saving keeps its VQGAN tensors and keys."""
    make_hf_chameleon(tmp_path / "hf")
    model = load_orthus(tmp_path / "hf", init_missing=True)
    vq = load_file(str(tmp_path / "hf" / "model.safetensors"))["model.vqmodel.quantize.embedding.weight"]
    assert torch.equal(model.vision.codebook.weight, vq)  # codebook_in starts as the VQ codebook
    save_orthus(model, tmp_path / "ours")
    _assert_same(model, load_orthus(tmp_path / "ours"))
    src = load_file(str(tmp_path / "hf" / "model.safetensors"))
    out = load_file(str(tmp_path / "ours" / "model.safetensors"))
    for k, v in src.items():
        assert torch.equal(out[k], v), k
    cfg_src = json.loads((tmp_path / "hf" / "config.json").read_text())
    cfg_out = json.loads((tmp_path / "ours" / "config.json").read_text())
    assert cfg_out["vocabulary_map"] == cfg_src["vocabulary_map"]


def test_head_prefix_is_detected_and_kept(tmp_path: Path) -> None:
    model = tiny_orthus(seed=4)
    save_orthus(model, tmp_path)
    path = tmp_path / "model.safetensors"
    renamed = {("other.net." + k[len(DEFAULT_HEAD_PREFIX):] if k.startswith(DEFAULT_HEAD_PREFIX) else k): v
               for k, v in load_file(str(path)).items()}
    save_file(renamed, str(path))
    loaded = load_orthus(tmp_path)
    assert loaded.head_prefix == "other.net."
    _assert_same(model, loaded)
    save_orthus(loaded, tmp_path / "again")
    assert "other.net.input_proj.weight" in load_file(str(tmp_path / "again" / "model.safetensors"))


def test_missing_or_unknown_tensors_fail(tmp_path: Path) -> None:
    make_hf_chameleon(tmp_path)
    with pytest.raises(KeyError, match="missing"):
        load_orthus(tmp_path)  # a plain Chameleon checkpoint lacks codebook_in and the head
    path = tmp_path / "model.safetensors"
    tensors = load_file(str(path))
    tensors["model.something_else.weight"] = torch.zeros(2)
    save_file(tensors, str(path))
    with pytest.raises(KeyError, match="unexpected"):
        load_orthus(tmp_path, init_missing=True)


def test_bf16_load(tmp_path: Path) -> None:
    save_orthus(tiny_orthus(), tmp_path)
    model = load_orthus(tmp_path, dtype=torch.bfloat16)
    assert model.backbone.embed.weight.dtype == torch.bfloat16
    with torch.no_grad():
        _, logits = model(torch.tensor([[1, 40, 41]]))
    assert torch.isfinite(logits.float()).all()
    prompt = build_prompt(model.config, [40, 41])
    latents = model.generate_image([prompt], prompt, steps=3, generator=torch.Generator().manual_seed(0))
    assert latents.dtype == torch.float32 and torch.isfinite(latents).all()  # sampler state stays float32
