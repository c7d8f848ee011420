"""(e) save -> load is exact; config.json round trip; the released config parses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.nextstep.checkpoint import internal_to_checkpoint, load_nextstep, save_nextstep
from models.nextstep.config import NextStepConfig
from models.nextstep.conftest import tiny_config, tiny_model

# NextStep-1.1/config.json as the brief (§2.1) gives it; vocab_size and rope_theta were not visible
# there and take Qwen2.5-14B's values.
RELEASED = {
    "architectures": ["LlamaForCausalLM"], "model_type": "nextstep",
    "auto_map": {"AutoConfig": "models/config.NextStepConfig", "AutoModel": "models/nextstep_model.NextStep"},
    "attention_bias": True, "o_attention_bias": False, "base_image_grid_size": 64, "boi": 151667, "eoi": 151668,
    "bos_token_id": 151643, "eos_token_id": 151643, "genloss_batch_mul": 4, "genloss_depth": 12,
    "genloss_width": 1536, "genloss_type": "transport", "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120,
    "image_loss_weight": 1.0, "image_placeholder_id": 151669, "intermediate_size": 13824, "lm_loss_weight": 0.01,
    "max_position_embeddings": 131072, "mlp_bias": False, "num_attention_heads": 40, "num_channels": 16,
    "num_hidden_layers": 48, "num_key_value_heads": 8, "pad_token_id_added": 151665, "patch_size": 2,
    "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "vocab_size": 152064,
}


def _assert_same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("shard", [None, 20_000])
def test_save_load_exact(tmp_path: Path, shard: int | None) -> None:
    m = tiny_model(seed=3)
    save_nextstep(m, tmp_path, max_shard_bytes=shard)
    if shard:
        assert len(list(tmp_path.glob("model-*-of-*.safetensors"))) > 1
    back = load_nextstep(tmp_path)
    assert back.config == m.config
    _assert_same(m, back)
    ids = torch.tensor([[1, 4, 5, 59, 60, 9]])
    with torch.no_grad():
        assert torch.equal(m(ids), back(ids))


def test_tied_embeddings_round_trip(tmp_path: Path) -> None:
    m = tiny_model(seed=4, tie_word_embeddings=True)
    save_nextstep(m, tmp_path)
    back = load_nextstep(tmp_path)
    assert back.backbone.lm_head.weight is back.backbone.embed.weight
    _assert_same(m, back)


def test_checkpoint_names() -> None:
    assert internal_to_checkpoint("backbone.layers.3.q_proj.bias") == "model.layers.3.self_attn.q_proj.bias"
    assert internal_to_checkpoint("backbone.embed.weight") == "model.embed_tokens.weight"
    assert internal_to_checkpoint("image_in_projector.weight") == "image_in_projector.weight"
    assert internal_to_checkpoint("image_head.net.res_blocks.0.adaLN_modulation.1.weight") == \
        "image_head.net.res_blocks.0.adaLN_modulation.1.weight"


def test_released_config_parses_and_round_trips() -> None:
    cfg = NextStepConfig.from_hf(RELEASED)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (5120, 48, 40, 8, 128)
    assert (cfg.fm_head_dim, cfg.fm_head_layers, cfg.token_dim, cfg.down_factor) == (1536, 12, 64, 16)
    assert cfg.extra["auto_map"] == RELEASED["auto_map"] and cfg.extra["genloss_type"] == "transport"
    bb = cfg.backbone_config()
    assert bb.layout == "qwen2" and bb.qkv_bias and bb.rope_theta == 1e6
    out = cfg.to_hf()
    for k, v in RELEASED.items():
        assert out[k] == v, k
    assert NextStepConfig.from_hf(json.loads(json.dumps(out))) == cfg


def test_old_key_spelling_and_transformers5_rope() -> None:
    d = {**RELEASED, "fm_head_dim": 1024, "fm_head_layers": 6, "latent_channels": 16, "latent_patch_size": 2,
         "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}
    for k in ("genloss_width", "genloss_depth", "rope_theta"):
        d.pop(k)
    cfg = NextStepConfig.from_hf(d)
    assert (cfg.fm_head_dim, cfg.fm_head_layers, cfg.rope_theta) == (1024, 6, 5e5)


@pytest.mark.parametrize("bad", [
    {"o_attention_bias": True}, {"boi": 10**9}, {"head_dim": 64}, {"rope_scaling": {"type": "yarn"}},
    {"use_gen_pos_embed": True}, {"model_type": "qwen2"}, {"mlp_bias": True}, {"eoi": 151667},
])
def test_bad_configs_are_rejected(bad: dict) -> None:
    with pytest.raises(ValueError):
        NextStepConfig.from_hf({**RELEASED, **bad})


def test_direct_validation() -> None:
    with pytest.raises(ValueError):
        tiny_config(num_kv_heads=3)
    with pytest.raises(ValueError):
        tiny_config(fm_head_layers=0)
