"""Numerical parity of `models/` against transformers (Qwen2, Llama) and PEFT, plus checkpoint I/O.

The references run with `attn_implementation="eager"`; a prepared 4D float mask is passed through
transformers' masking_utils unchanged (`_preprocess_mask_arguments` returns 4D masks as-is) and is
added to the attention scores, so an all-zero [B, 1, T, T] mask is full bidirectional attention.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from models.attention import causal_ids, mask_from_ids
from models.checkpoint import load_model, save_model
from models.config import ModelConfig
from models.lora import apply_lora, lora_modules, save_adapter
from models.transformer import Transformer

B, T, VOCAB, MASK_ID = 2, 16, 100, 99
ATOL = 1e-4


def _randomize(model: torch.nn.Module, std: float = 0.2) -> None:
    """Non-trivial values everywhere (HF inits biases to 0 and norms to 1, which would hide mix-ups)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith("layernorm.weight") or ".ln_f" in name:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))


def _ids(seed: int = 1, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (B, T), generator=torch.Generator().manual_seed(seed))


def _bidir_hf() -> torch.Tensor:
    return torch.zeros(B, 1, T, T)  # additive float mask, nothing masked


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


def _qwen2(tmp_path: Path) -> tuple[Qwen2ForCausalLM, Path]:
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, rope_theta=1e6, rms_norm_eps=1e-6,
                      max_position_embeddings=64, tie_word_embeddings=False, attn_implementation="eager")
    ref = Qwen2ForCausalLM(cfg).float().eval()
    _randomize(ref)
    d = tmp_path / "qwen2"
    ref.save_pretrained(d, safe_serialization=True)
    return ref, d


def _as_layout(src: Path, dst: Path, model_type: str, **extra: object) -> Path:
    dst.mkdir(parents=True)
    c = json.loads((src / "config.json").read_text())
    c.update(model_type=model_type, **extra)
    (dst / "config.json").write_text(json.dumps(c))
    (dst / "model.safetensors").write_bytes((src / "model.safetensors").read_bytes())
    return dst


@torch.no_grad()
def test_dream_and_qwen2_match_transformers_qwen2(tmp_path: Path) -> None:
    ref, qdir = _qwen2(tmp_path)
    dream = load_model(_as_layout(qdir, tmp_path / "dream", "Dream", mask_token_id=MASK_ID))
    assert dream.config.layout == "dream" and dream.config.num_kv_heads == 2 and dream.config.qkv_bias
    assert dream.config.rope_theta == 1e6  # transformers 5 writes it under rope_parameters
    ids = _ids()
    want = ref(input_ids=ids, attention_mask=_bidir_hf()).logits
    got = dream(ids)
    assert _max_diff(got, want) < ATOL
    # The reference really is bidirectional: a change at the last token moves position 0.
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % VOCAB
    assert _max_diff(ref(input_ids=ids2, attention_mask=_bidir_hf()).logits[:, 0], want[:, 0]) > 1e-3
    assert _max_diff(dream(ids2), ref(input_ids=ids2, attention_mask=_bidir_hf()).logits) < ATOL

    qwen = load_model(qdir)  # model_type "qwen2", as saved by transformers
    assert qwen.config.layout == "qwen2" and qwen.config.rope_theta == 1e6
    causal = ref(input_ids=ids).logits
    mask = mask_from_ids(causal_ids(T), causal_ids(T))
    assert _max_diff(qwen(ids, mask=mask), causal) < ATOL
    assert _max_diff(ref(input_ids=ids2).logits[:, :-1], causal[:, :-1]) < 1e-6  # causal sanity
    assert _max_diff(causal, want) > 1e-3  # the two masks are really different


_LLAMA_TO_LLADA = [
    (r"model\.embed_tokens\.", "model.transformer.wte."),
    (r"model\.norm\.", "model.transformer.ln_f."),
    (r"lm_head\.", "model.transformer.ff_out."),
    (r"model\.layers\.(\d+)\.self_attn\.([qkv])_proj\.", r"model.transformer.blocks.\1.\2_proj."),
    (r"model\.layers\.(\d+)\.self_attn\.o_proj\.", r"model.transformer.blocks.\1.attn_out."),
    (r"model\.layers\.(\d+)\.input_layernorm\.", r"model.transformer.blocks.\1.attn_norm."),
    (r"model\.layers\.(\d+)\.post_attention_layernorm\.", r"model.transformer.blocks.\1.ff_norm."),
    (r"model\.layers\.(\d+)\.mlp\.gate_proj\.", r"model.transformer.blocks.\1.ff_proj."),
    (r"model\.layers\.(\d+)\.mlp\.up_proj\.", r"model.transformer.blocks.\1.up_proj."),
    (r"model\.layers\.(\d+)\.mlp\.down_proj\.", r"model.transformer.blocks.\1.ff_out."),
]


def _llada_name(name: str) -> str:
    for pat, rep in _LLAMA_TO_LLADA:
        new, n = re.subn("^" + pat, rep, name)
        if n:
            return new
    raise KeyError(name)


@pytest.mark.parametrize("embedding_size", [VOCAB, VOCAB + 12])
@torch.no_grad()
def test_llada_matches_transformers_llama(tmp_path: Path, embedding_size: int) -> None:
    torch.manual_seed(0)
    lcfg = LlamaConfig(vocab_size=embedding_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, rope_theta=500000.0, rms_norm_eps=1e-5,
                       attention_bias=False, mlp_bias=False, tie_word_embeddings=False,
                       max_position_embeddings=64, attn_implementation="eager")
    ref = LlamaForCausalLM(lcfg).float().eval()
    _randomize(ref)
    d = tmp_path / "llada"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({
        "model_type": "llada", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 4,
        "mlp_hidden_size": 64, "vocab_size": VOCAB, "embedding_size": embedding_size,
        "max_sequence_length": 64, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "weight_tying": False,
        "include_qkv_bias": False, "mask_token_id": MASK_ID,
        # LLaDA's own defaults for these are OLMo's (sequential block, swiglu, no RoPE): a real LLaDA
        # config spells them out, and the loader refuses a config that leaves them to the defaults.
        "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": True}))
    tensors = {_llada_name(k): v.contiguous() for k, v in ref.state_dict().items()}
    save_file(tensors, str(d / "model.safetensors"))
    ours = load_model(d)
    assert ours.config.table_size == embedding_size and ours.embed.weight.shape[0] == embedding_size
    ids = _ids()
    want = ref(input_ids=ids, attention_mask=_bidir_hf()).logits[..., :VOCAB]
    got = ours(ids)
    assert got.shape == (B, T, VOCAB)
    assert _max_diff(got, want) < ATOL
    ids2 = ids.clone()
    ids2[:, -1] = (ids2[:, -1] + 1) % VOCAB
    want2 = ref(input_ids=ids2, attention_mask=_bidir_hf()).logits[..., :VOCAB]
    assert _max_diff(want2[:, 0], want[:, 0]) > 1e-3  # the reference is bidirectional
    assert _max_diff(ours(ids2), want2) < ATOL


@torch.no_grad()
def test_lora_merge_matches_peft(tmp_path: Path) -> None:
    ref, qdir = _qwen2(tmp_path)
    base = _as_layout(qdir, tmp_path / "dream", "Dream", mask_token_id=MASK_ID)
    torch.manual_seed(1)
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    peft_model = get_peft_model(ref, lcfg)
    n_b = 0
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            p.copy_(0.1 * torch.randn_like(p))
            n_b += 1
    assert n_b == 8
    adir = tmp_path / "adapter"
    peft_model.save_pretrained(adir)
    keys = load_file(str(adir / "adapter_model.safetensors"))
    assert "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight" in keys
    merged = peft_model.merge_and_unload().eval()
    ids = _ids()
    want = merged(input_ids=ids, attention_mask=_bidir_hf()).logits
    got = load_model(base, adir)(ids)
    assert _max_diff(got, want) < ATOL
    assert _max_diff(load_model(base)(ids), want) > 1e-3  # the adapter really changes the output


def _tiny_cfg(layout: str, **kw: object) -> ModelConfig:
    base = dict(layout=layout, vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4,
                num_kv_heads=4 if layout == "llada" else 2, intermediate_size=64, max_position_embeddings=64,
                qkv_bias=layout != "llada", mask_token_id=MASK_ID if layout != "qwen2" else None,
                rope_theta=500000.0 if layout == "llada" else 1e6)
    return ModelConfig(**{**base, **kw})


def _tiny_model(cfg: ModelConfig, seed: int = 0, std: float = 0.2) -> Transformer:
    torch.manual_seed(seed)
    m = Transformer(cfg).eval()
    _randomize(m, std)
    return m


@torch.no_grad()
def test_our_lora_adapter_roundtrip_llada(tmp_path: Path) -> None:
    # std 0.1 keeps logits O(1), so merged-vs-unmerged float32 rounding stays ~1e-6 (vs ~5e-6 at 0.2).
    model = _tiny_model(_tiny_cfg("llada", embedding_size=VOCAB + 12), std=0.1)
    save_model(model, tmp_path / "base")
    torch.manual_seed(2)
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=8, dropout=0.1)
    for _, m in lora_modules(model):
        m.lora_B.copy_(0.1 * torch.randn_like(m.lora_B))
    model.eval()
    ids = _ids()
    want = model(ids)
    adir = tmp_path / "adapter"
    save_adapter(model, adir, base_model="../base", r=4, alpha=8, dropout=0.1)
    keys = set(load_file(str(adir / "adapter_model.safetensors")))
    assert len(keys) == 2 * 2 * 4
    assert "base_model.model.model.transformer.blocks.1.attn_out.lora_A.weight" in keys
    assert "base_model.model.model.transformer.blocks.0.q_proj.lora_B.weight" in keys
    acfg = json.loads((adir / "adapter_config.json").read_text())
    assert sorted(acfg["target_modules"]) == ["attn_out", "k_proj", "q_proj", "v_proj"]
    got = load_model(tmp_path / "base", adir)(ids)
    assert _max_diff(got, want) < 1e-5
    assert _max_diff(load_model(adir)(ids), want) < 1e-5  # base resolved relative to the adapter dir
    assert _max_diff(load_model(tmp_path / "base")(ids), want) > 1e-3


@pytest.mark.parametrize("layout,tied", [("llada", False), ("dream", False), ("qwen2", True)])
@torch.no_grad()
def test_save_load_roundtrip_exact(tmp_path: Path, layout: str, tied: bool) -> None:
    model = _tiny_model(_tiny_cfg(layout, tie_word_embeddings=tied))
    save_model(model, tmp_path / "m")
    loaded = load_model(tmp_path / "m")
    skip = {"extra", "embedding_size"}
    for f in dataclasses.fields(ModelConfig):
        if f.name not in skip:
            assert getattr(loaded.config, f.name) == getattr(model.config, f.name), f.name
    assert loaded.config.table_size == model.config.table_size
    sd, sd2 = model.state_dict(), loaded.state_dict()
    assert sd.keys() == sd2.keys()
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)
    ids = _ids()
    assert torch.equal(loaded(ids), model(ids))


@torch.no_grad()
def test_sharded_save_load(tmp_path: Path) -> None:
    model = _tiny_model(_tiny_cfg("dream"))
    save_model(model, tmp_path / "s", max_shard_bytes=8192)
    shards = sorted(p.name for p in (tmp_path / "s").glob("model-*-of-*.safetensors"))
    assert len(shards) > 1 and not (tmp_path / "s" / "model.safetensors").exists()
    index = json.loads((tmp_path / "s" / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    assert len(index["weight_map"]) == len(model.state_dict())
    ids = _ids()
    assert torch.equal(load_model(tmp_path / "s")(ids), model(ids))


def test_config_validation() -> None:
    good = _tiny_cfg("dream")
    with pytest.raises(ValueError, match="divisible by num_heads"):
        dataclasses.replace(good, hidden_size=30)
    with pytest.raises(ValueError, match="divisible by num_kv_heads"):
        dataclasses.replace(good, num_kv_heads=3)
    with pytest.raises(ValueError, match="mask_token_id"):
        dataclasses.replace(good, mask_token_id=None)
    with pytest.raises(ValueError, match="mask_token_id"):
        _tiny_cfg("llada", mask_token_id=None)
    assert _tiny_cfg("qwen2").mask_token_id is None  # the AR layout needs none
    with pytest.raises(ValueError, match="layout"):
        dataclasses.replace(good, layout="gpt2")
    with pytest.raises(ValueError, match="embedding_size"):
        dataclasses.replace(good, embedding_size=VOCAB - 1)
    hf = good.to_hf()
    with pytest.raises(ValueError, match="unsupported model_type"):
        ModelConfig.from_hf({**hf, "model_type": "mistral"})
    with pytest.raises(ValueError, match="mask_token_id"):
        ModelConfig.from_hf({k: v for k, v in hf.items() if k != "mask_token_id"})
    with pytest.raises(ValueError, match=r"rope_parameters\.rope_type='yarn'"):
        ModelConfig.from_hf({**hf, "rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}})
    assert ModelConfig.from_hf(hf).rope_theta == 1e6
    legacy = {k: v for k, v in hf.items() if k != "rope_theta"}
    assert ModelConfig.from_hf({**legacy, "rope_parameters": {"rope_type": "default", "rope_theta": 2e5}}
                               ).rope_theta == 2e5
