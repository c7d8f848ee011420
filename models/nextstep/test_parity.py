"""(a) The backbone matches transformers' Qwen2ForCausalLM, loaded through load_nextstep from a
directory written by `save_pretrained` plus the NextStep modules in a second shard."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from models.nextstep.checkpoint import EXTRA_PREFIXES, load_nextstep
from models.nextstep.conftest import TINY, randomize_, tiny_model
from models.nextstep.model import NextStep, causal_mask

transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _hf_reference(seed: int = 0) -> torch.nn.Module:
    cfg = transformers.Qwen2Config(
        vocab_size=TINY["vocab_size"], hidden_size=TINY["hidden_size"], num_hidden_layers=TINY["num_layers"],
        num_attention_heads=TINY["num_heads"], num_key_value_heads=TINY["num_kv_heads"],
        intermediate_size=TINY["intermediate_size"], max_position_embeddings=TINY["max_position_embeddings"],
        rms_norm_eps=TINY["rms_norm_eps"], rope_theta=10000.0, tie_word_embeddings=False,
        attn_implementation="eager",
    )
    torch.manual_seed(seed)
    hf = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():  # HF's init (std 0.02) gives logits of ~0.4: too small to test 1e-4 against
        for p in hf.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.25)
    randomize_(hf)  # non-zero q/k/v biases and RMSNorm weights
    return hf.eval()


def _write_nextstep_dir(hf: torch.nn.Module, extras: NextStep, d: Path) -> None:
    """save_pretrained, then turn it into a 2-shard NextStep checkpoint like the released ones."""
    hf.save_pretrained(d)
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="nextstep", architectures=["LlamaForCausalLM"], attention_bias=True,
               o_attention_bias=False, genloss_width=TINY["fm_head_dim"], genloss_depth=TINY["fm_head_layers"],
               num_channels=16, patch_size=2,
               **{k: TINY[k] for k in ("boi", "eoi", "image_placeholder_id", "image_area_id", "pad_token_id_added",
                                       "bos_token_id", "eos_token_id")})
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    extra = {k: v.contiguous() for k, v in extras.state_dict().items() if k.startswith(EXTRA_PREFIXES)}
    save_file(extra, str(d / "model-00002-of-00002.safetensors"))
    with safe_open(str(d / "model-00001-of-00002.safetensors"), "pt") as f:
        backbone_names = list(f.keys())
    weight_map = dict.fromkeys(backbone_names, "model-00001-of-00002.safetensors")
    weight_map.update(dict.fromkeys(extra, "model-00002-of-00002.safetensors"))
    (d / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, NextStep, NextStep]:
    d = tmp_path_factory.mktemp("nextstep_hf")
    hf, extras = _hf_reference(), tiny_model(seed=1)
    _write_nextstep_dir(hf, extras, d)
    return hf, load_nextstep(d), extras


def test_logits_match_qwen2(pair: tuple[torch.nn.Module, NextStep, NextStep]) -> None:
    hf, ours, _ = pair
    torch.manual_seed(2)
    ids = torch.randint(0, TINY["image_area_id"], (2, 23))  # below the image specials
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
        got = ours.logits(ours(ids, mask=causal_mask(torch.ones_like(ids, dtype=torch.bool))))
    diff = (ref - got).abs().max().item()
    print(f"qwen2 logits parity: max |diff| = {diff:.3e} (logit scale {ref.abs().max().item():.2f})")
    assert diff < TOL


def test_embeds_path_with_image_tokens_matches_qwen2(pair: tuple[torch.nn.Module, NextStep, NextStep]) -> None:
    """The inputs_embeds path: image tokens projected into placeholder slots, fed to both models."""
    hf, ours, _ = pair
    ph = TINY["image_placeholder_id"]
    ids = torch.tensor([[1, 5, 6, 59, TINY["boi"], ph, ph, ph, ph, TINY["eoi"], 7, 8]])
    tokens = torch.randn(4, 64)
    with torch.no_grad():
        emb = ours.embed(ids, tokens)
        ref = hf(inputs_embeds=emb).logits
        got = ours.logits(ours.hidden(emb, mask=causal_mask(torch.ones_like(ids, dtype=torch.bool))))
    assert not torch.equal(emb[0, 5], ours.backbone.embed.weight[ph])  # the slot was really replaced
    assert (ref - got).abs().max().item() < TOL


def test_left_padding_matches_qwen2_attention_mask(pair: tuple[torch.nn.Module, NextStep, NextStep]) -> None:
    """CFG rows are left-padded: non-pad logits equal HF's with the same attention_mask."""
    hf, ours, _ = pair
    torch.manual_seed(3)
    ids = torch.randint(3, 50, (2, 15))
    valid = torch.ones_like(ids, dtype=torch.bool)
    valid[1, :6] = False
    ids[1, :6] = TINY["pad_token_id_added"]
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=valid.long()).logits
        got = ours.logits(ours(ids, mask=causal_mask(valid)))
    assert torch.isfinite(got).all()
    assert (ref - got)[valid].abs().max().item() < TOL


def test_extra_modules_loaded_from_second_shard(pair: tuple[torch.nn.Module, NextStep, NextStep]) -> None:
    _, ours, extras = pair
    want = {k: v for k, v in extras.state_dict().items() if k.startswith(EXTRA_PREFIXES)}
    got = ours.state_dict()
    assert want and all(torch.equal(got[k], v) for k, v in want.items())
