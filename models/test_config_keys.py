"""Strict configs: the real LLaDA / Dream config.json load, and every maths value we do not compute is
refused with its key and value named (models.config_keys)."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from transformers import Qwen2Config

from models.checkpoint import read_config
from models.config import ModelConfig
from models.config_keys import LLADA_RULES, QWEN2_RULES

REPO = Path(__file__).resolve().parents[1]

# GSAI-ML/LLaDA-8B-Instruct config.json, as published (all of LLaDAConfig's keys are written out).
LLADA_8B_INSTRUCT: dict[str, Any] = {
    "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
    "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
    "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                 "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                 "AutoModel": "modeling_llada.LLaDAModelLM"},
    "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": 4096,
    "embedding_dropout": 0.0, "embedding_size": 126464, "eos_token_id": 126081, "flash_attention": False,
    "include_bias": False, "include_qkv_bias": False, "init_cutoff_factor": None, "init_device": "meta",
    "init_fn": "mitchell", "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms",
    "layer_norm_with_affine": True, "mask_token_id": 126336, "max_sequence_length": 4096,
    "mlp_hidden_size": 12288, "mlp_ratio": 4, "model_type": "llada", "multi_query_attention": None,
    "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "pad_token_id": 126081, "precision": "amp_bf16",
    "residual_dropout": 0.0, "rms_norm_eps": 1e-05, "rope": True, "rope_full_precision": True,
    "rope_theta": 500000.0, "scale_logits": False, "transformers_version": "4.46.3", "use_cache": False,
    "vocab_size": 126464, "weight_tying": False,
}

# Dream-org/Dream-v0-Instruct-7B config.json (Qwen2.5-7B's keys with model_type Dream and the mask id).
DREAM_V0_INSTRUCT_7B: dict[str, Any] = {
    "architectures": ["DreamModel"], "attention_dropout": 0.0,
    "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
    "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584,
    "initializer_range": 0.02, "intermediate_size": 18944, "mask_token_id": 151666,
    "max_position_embeddings": 131072, "max_window_layers": 28, "model_type": "Dream",
    "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4, "pad_token_id": 151643,
    "rms_norm_eps": 1e-06, "rope_scaling": None, "rope_theta": 1000000.0, "sliding_window": None,
    "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.46.2", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 152064,
}


def _fields(c: ModelConfig) -> dict[str, Any]:
    return {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name != "extra"}


def _quiet(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r for r in caplog.records if r.name == "models.config_keys"], caplog.text


def test_real_llada_8b_instruct_loads(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        c = ModelConfig.from_hf(copy.deepcopy(LLADA_8B_INSTRUCT))
    _quiet(caplog)  # every key of the real config is known
    assert (c.layout, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads) == ("llada", 4096, 32, 32, 32)
    assert c.intermediate_size == 12288  # mlp_hidden_size wins; mlp_ratio 4 would say 16384
    assert (c.vocab_size, c.table_size, c.max_position_embeddings) == (126464, 126464, 4096)
    assert (c.rope_theta, c.rms_norm_eps, c.tie_word_embeddings, c.qkv_bias) == (500000.0, 1e-5, False, False)
    assert (c.mask_token_id, c.eos_token_id, c.pad_token_id) == (126336, 126081, 126081)
    again = ModelConfig.from_hf(json.loads(json.dumps(c.to_hf())))
    assert _fields(again) == _fields(c)
    assert again.to_hf()["init_fn"] == "mitchell"  # harmless keys travel in extra


def test_real_dream_v0_instruct_loads(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        c = ModelConfig.from_hf(copy.deepcopy(DREAM_V0_INSTRUCT_7B))
        # Qwen2.5-7B itself writes sliding_window 131072 with use_sliding_window false: unused, accepted.
        ModelConfig.from_hf({**DREAM_V0_INSTRUCT_7B, "sliding_window": 131072})
    _quiet(caplog)
    assert (c.layout, c.hidden_size, c.num_layers, c.num_heads, c.num_kv_heads) == ("dream", 3584, 28, 28, 4)
    assert (c.intermediate_size, c.vocab_size, c.rope_theta, c.rms_norm_eps) == (18944, 152064, 1e6, 1e-6)
    assert c.qkv_bias and not c.tie_word_embeddings and c.mask_token_id == 151666
    assert _fields(ModelConfig.from_hf(json.loads(json.dumps(c.to_hf())))) == _fields(c)


def test_a_full_transformers_qwen2_config_loads_quietly(caplog: pytest.LogCaptureFixture) -> None:
    # to_dict(), not to_diff_dict(): every generic PreTrainedConfig key is there.
    d = Qwen2Config(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2).to_dict()
    with caplog.at_level(logging.WARNING):
        c = ModelConfig.from_hf(json.loads(json.dumps(d)))
    _quiet(caplog)
    assert c.layout == "qwen2" and c.num_kv_heads == 2


@pytest.mark.parametrize("name", ["arith-dream-teacher", "arith-qwen2-ar"])
def test_embedded_checkpoints_round_trip(name: str) -> None:
    c = read_config(REPO / "checkpoints" / name)
    assert ModelConfig.from_hf(json.loads(json.dumps(c.to_hf()))) == c


LLADA_REJECTED = [
    ("block_type", "sequential"), ("block_type", "parallel"), ("activation_type", "swiglu"),
    ("activation_type", "gelu"), ("activation_type", "relu"), ("layer_norm_type", "default"),
    ("layer_norm_type", "gemma_rms"), ("layer_norm_type", "low_precision"), ("layer_norm_with_affine", False),
    ("bias_for_layer_norm", True), ("include_bias", True), ("rope", False), ("alibi", True),
    ("scale_logits", True), ("input_emb_norm", True), ("attention_layer_norm", True), ("block_group_size", 2),
    ("block_group_size", True), ("clip_qkv", 8.0), ("quantization_config", {"quant_method": "gptq"}),
    ("multi_query_attention", True),  # with n_kv_heads 32: LLaDA refuses the pair too
    ("multi_query_attention", "yes"),
]


@pytest.mark.parametrize("key,value", LLADA_REJECTED)
def test_llada_rejects_what_it_does_not_compute(key: str, value: Any) -> None:
    with pytest.raises(ValueError) as e:
        ModelConfig.from_hf({**LLADA_8B_INSTRUCT, key: value})
    assert f"{key}={value!r}" in str(e.value)


def test_every_llada_rule_has_a_rejection_test() -> None:
    assert {k for k, _ in LLADA_REJECTED} >= set(LLADA_RULES)


@pytest.mark.parametrize("key,default", [("block_type", "sequential"), ("activation_type", "swiglu"),
                                         ("layer_norm_type", "default"), ("rope", False)])
def test_an_absent_llada_key_means_llada_s_default(key: str, default: Any) -> None:
    d = {k: v for k, v in LLADA_8B_INSTRUCT.items() if k != key}
    with pytest.raises(ValueError, match=rf"{key}={default!r} \(absent"):
        ModelConfig.from_hf(d)


def test_llada_head_and_mlp_geometry() -> None:
    base = {**LLADA_8B_INSTRUCT, "n_kv_heads": None}
    assert ModelConfig.from_hf({**base, "multi_query_attention": True}).num_kv_heads == 1
    assert ModelConfig.from_hf({**base, "multi_query_attention": False}).num_kv_heads == 32
    assert ModelConfig.from_hf(base).num_kv_heads == 32
    assert ModelConfig.from_hf({**LLADA_8B_INSTRUCT, "n_kv_heads": 8}).num_kv_heads == 8  # GQA
    assert ModelConfig.from_hf({**LLADA_8B_INSTRUCT, "n_kv_heads": 1, "multi_query_attention": True}
                               ).num_kv_heads == 1
    assert ModelConfig.from_hf({**LLADA_8B_INSTRUCT, "mlp_hidden_size": None}).intermediate_size == 4 * 4096
    no_tying = {k: v for k, v in LLADA_8B_INSTRUCT.items() if k != "weight_tying"}
    assert ModelConfig.from_hf(no_tying).tie_word_embeddings  # LLaDAConfig's default is tied


def test_llada_harmless_keys_take_any_value(caplog: pytest.LogCaptureFixture) -> None:
    changed = {"rope_full_precision": False, "flash_attention": True, "attention_dropout": 0.1,
               "residual_dropout": 0.1, "embedding_dropout": 0.1, "alibi_bias_max": 4.0, "init_fn": "normal",
               "attention_layer_norm_with_affine": False, "precision": "fp32", "use_cache": True}
    with caplog.at_level(logging.WARNING):
        c = ModelConfig.from_hf({**LLADA_8B_INSTRUCT, **changed})
    _quiet(caplog)
    assert _fields(c) == _fields(ModelConfig.from_hf(LLADA_8B_INSTRUCT))


QWEN2_REJECTED = [
    ("hidden_act", {"hidden_act": "gelu"}, "'gelu'"),
    ("hidden_act", {"hidden_act": "relu"}, "'relu'"),
    ("use_sliding_window", {"use_sliding_window": True, "sliding_window": 4096}, "True"),
    ("attention_bias", {"attention_bias": False}, "False"),
    ("mlp_bias", {"mlp_bias": True}, "True"),
    ("quantization_config", {"quantization_config": {"quant_method": "awq"}}, "{'quant_method': 'awq'}"),
    ("rope_scaling", {"rope_scaling": {"type": "linear", "factor": 2.0}}, "{'type': 'linear', 'factor': 2.0}"),
    ("rope_scaling", {"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "{'rope_type': 'yarn', 'factor': 4.0}"),
    ("rope_scaling", {"rope_scaling": "linear"}, "'linear'"),
    ("rope_parameters.rope_type", {"rope_parameters": {"rope_type": "dynamic", "rope_theta": 1e6}}, "'dynamic'"),
    ("rope_parameters.partial_rotary_factor",
     {"rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "partial_rotary_factor": 0.5}}, "0.5"),
    ("head_dim", {"head_dim": 64}, "64"),
    ("layer_types", {"layer_types": ["full_attention"] * 27 + ["sliding_attention"]}, "'sliding_attention'"),
]


@pytest.mark.parametrize("model_type", ["Dream", "qwen2"])
@pytest.mark.parametrize("key,change,shown", QWEN2_REJECTED)
def test_dream_and_qwen2_reject_what_they_do_not_compute(model_type: str, key: str, change: dict[str, Any],
                                                         shown: str) -> None:
    with pytest.raises(ValueError) as e:
        ModelConfig.from_hf({**DREAM_V0_INSTRUCT_7B, "model_type": model_type, **change})
    assert f"{key}=" in str(e.value) and shown in str(e.value), str(e.value)


def test_every_qwen2_rule_has_a_rejection_test() -> None:
    assert {k for k, _, _ in QWEN2_REJECTED} >= set(QWEN2_RULES)


def test_dream_accepted_spellings() -> None:
    ref = _fields(ModelConfig.from_hf(DREAM_V0_INSTRUCT_7B))
    for change in ({"hidden_act": "swish"}, {"attention_bias": True}, {"mlp_bias": False}, {"head_dim": 128},
                   {"layer_types": ["full_attention"] * 28}, {"rope_scaling": {"rope_type": "default"}},
                   {"sliding_window": 4096, "max_window_layers": 0}):
        assert _fields(ModelConfig.from_hf({**DREAM_V0_INSTRUCT_7B, **change})) == ref, change


def test_unknown_keys_warn_and_travel(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models.config_keys"):
        c = ModelConfig.from_hf({**DREAM_V0_INSTRUCT_7B, "my_new_flag": 3})
    assert "my_new_flag" in caplog.text
    assert c.extra is not None and c.extra["my_new_flag"] == 3 and c.to_hf()["my_new_flag"] == 3


def test_eos_token_id_may_be_a_list_of_stop_ids() -> None:
    base = {"model_type": "qwen2", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
            "num_attention_heads": 4, "intermediate_size": 64}
    many = ModelConfig.from_hf({**base, "eos_token_id": [151643, 151645]})
    assert many.stop_ids == {151643, 151645} and many.to_hf()["eos_token_id"] == [151643, 151645]
    assert ModelConfig.from_hf({**base, "eos_token_id": 7}).stop_ids == {7}
    assert ModelConfig.from_hf(base).stop_ids == frozenset()
    for bad in ([], ["<|im_end|>"], True, [1, None]):
        with pytest.raises(ValueError, match="eos_token_id must be a token id or a non-empty list"):
            ModelConfig.from_hf({**base, "eos_token_id": bad})
