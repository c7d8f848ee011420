"""Which `config.json` keys the loaders implement, and with which values: LLaDA and Dream/Qwen2 here
(`check_llada`, `check_qwen2`), Orthus and NextStep through `check_config` with their own tables.

Every key of a real config falls in one of three groups:
- a *maths* key (`LLADA_RULES`, `QWEN2_RULES`, and the special cases in `check_llada` / `check_qwen2`):
  its value changes what the network computes. It must be a value `models.transformer` computes, else
  ValueError naming the key and the value. An absent key means what the original code takes by default
  (`LLaDAConfig`'s defaults are OLMo's: `block_type: sequential`, `activation_type: swiglu`,
  `rope: false`, ...; a LLaDA config without them is not a llama-block LLaDA);
- a *harmless* key: read by the loader into ModelConfig fields, or one that does not change inference
  outputs (dropout, initialisation, training precision, metadata, or a knob that only matters when a
  rejected option is on, like `alibi_bias_max` or `sliding_window`);
- an *unknown* key: kept in `ModelConfig.extra` (written back by `to_hf`) and logged as a warning, not
  refused. Model authors and transformers add metadata keys over time (a config saved with `to_dict()`
  instead of `to_diff_dict()` carries dozens of generation defaults); refusing them would refuse real
  checkpoints, while every key the original modeling code reads is in one of the two lists above.

Values are taken from the original modeling code: LLaDA's `configuration_llada.py` / `modeling_llada.py`
(OLMo-derived: the llama block computes `ff_out(act(ff_proj(x)) * up_proj(x))`, so only `silu` is SwiGLU
there; `swiglu` halves ff_proj's output and does not even load), Dream's `modeling_dream.py` and
transformers' Qwen2 (q/k/v always with bias, `ACT2FN[hidden_act]`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Rule:
    absent: Any  # the value the original code uses when config.json lacks the key
    accepted: tuple[Any, ...]  # the values models.transformer computes
    meaning: str  # what the accepted value means, for the error message


_NOT_QUANTIZED = Rule(None, (None,), "unquantized weights")

LLADA_RULES: dict[str, Rule] = {
    "block_type": Rule("sequential", ("llama",), "the llama block: separate q/k/v, RMSNorm pre-norm, gated MLP"),
    "activation_type": Rule("swiglu", ("silu",), "ff_out(silu(ff_proj(x)) * up_proj(x)) in the llama block"),
    "layer_norm_type": Rule("default", ("rms",), "RMSNorm"),
    "layer_norm_with_affine": Rule(True, (True,), "norms with a weight"),
    "bias_for_layer_norm": Rule(None, (None, False), "norms without a bias"),
    "include_bias": Rule(False, (False,), "linear layers without bias (q/k/v bias is include_qkv_bias)"),
    "rope": Rule(False, (True,), "rotary position embeddings"),
    "alibi": Rule(False, (False,), "no ALiBi bias"),
    "scale_logits": Rule(False, (False,), "logits not scaled by 1/sqrt(d_model)"),
    "input_emb_norm": Rule(False, (False,), "embeddings not scaled by sqrt(d_model)"),
    "attention_layer_norm": Rule(False, (False,), "no q/k norm"),
    "block_group_size": Rule(1, (1,), "blocks named model.transformer.blocks.N"),
    "clip_qkv": Rule(None, (None,), "q/k/v not clipped"),  # OLMo's; absent from LLaDA's configs
    "quantization_config": _NOT_QUANTIZED,
}
# Read into ModelConfig fields by ModelConfig.from_hf.
LLADA_FIELDS = frozenset({
    "model_type", "d_model", "n_layers", "n_heads", "n_kv_heads", "multi_query_attention", "mlp_hidden_size",
    "mlp_ratio", "vocab_size", "embedding_size", "max_sequence_length", "rope_theta", "rms_norm_eps",
    "weight_tying", "include_qkv_bias", "mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id",
})
LLADA_HARMLESS = frozenset({
    "alibi_bias_max",  # only with alibi
    "attention_layer_norm_with_affine",  # only with attention_layer_norm
    # RoPE in float32 whatever the model dtype; Tessera always rotates in float32 (models.transformer.Rotary),
    # so `false` differs only by rounding in bf16/fp16, like any other kernel difference: accepted.
    "rope_full_precision",
    "flash_attention", "attention_dropout", "residual_dropout", "embedding_dropout",
    "init_device", "init_fn", "init_std", "init_cutoff_factor", "precision",
})

QWEN2_RULES: dict[str, Rule] = {
    # transformers maps both names to nn.SiLU (ACT2FN).
    "hidden_act": Rule("silu", ("silu", "swish"), "a SiLU-gated MLP"),
    "use_sliding_window": Rule(False, (False,), "full attention in every layer"),
    # Neither Qwen2 nor Dream reads these (q/k/v always have a bias, the MLP never); Llama-derived
    # "Dream" conversions set them, and their weights are not this layout.
    "attention_bias": Rule(None, (None, True), "q/k/v projections with bias"),
    "mlp_bias": Rule(None, (None, False), "an MLP without bias"),
    "quantization_config": _NOT_QUANTIZED,
}
QWEN2_FIELDS = frozenset({
    "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "intermediate_size", "vocab_size", "rope_theta", "rope_parameters", "rms_norm_eps", "max_position_embeddings",
    "tie_word_embeddings", "mask_token_id", "eos_token_id", "pad_token_id", "bos_token_id",
})
QWEN2_HARMLESS = frozenset({
    "sliding_window", "max_window_layers",  # only with use_sliding_window
    "attention_dropout", "initializer_range",
    "head_dim", "layer_types", "rope_scaling",  # checked in check_qwen2
})

# Keys of every transformers config that do not change the forward pass: metadata, and the generation
# defaults transformers 4 wrote with `to_dict()` (Tessera's sampling comes from the request).
COMMON_HARMLESS = frozenset({
    "_name_or_path", "add_cross_attention", "architectures", "auto_map", "bad_words_ids", "begin_suppress_tokens",
    "chunk_size_feed_forward", "cross_attention_hidden_size", "decoder_start_token_id", "diversity_penalty",
    "do_sample", "dtype", "early_stopping", "encoder_no_repeat_ngram_size", "exponential_decay_length_penalty",
    "finetuning_task", "forced_bos_token_id", "forced_eos_token_id", "id2label", "initializer_range", "is_decoder",
    "is_encoder_decoder", "label2id", "length_penalty", "max_length", "min_length", "no_repeat_ngram_size",
    "num_beam_groups", "num_beams", "num_return_sequences", "output_attentions", "output_hidden_states",
    "output_scores", "prefix", "problem_type", "pruned_heads", "remove_invalid_values", "repetition_penalty",
    "return_dict", "return_dict_in_generate", "sep_token_id", "suppress_tokens", "task_specific_params",
    "temperature", "tf_legacy_loss", "tie_encoder_decoder", "tokenizer_class", "top_k", "top_p", "torch_dtype",
    "torchscript", "transformers_version", "typical_p", "use_bfloat16", "use_cache",
})


def _reject(family: str, key: str, value: Any, meaning: str, absent: bool = False) -> ValueError:
    how = " (absent: the original code's default)" if absent else ""
    return ValueError(f"{family} config.json: {key}={value!r}{how} is not supported; Tessera implements "
                      f"{meaning}")


def _check_rules(family: str, d: dict[str, Any], rules: dict[str, Rule]) -> None:
    for key, rule in rules.items():
        value = d.get(key, rule.absent)
        # Compare type as well: JSON true must not pass for 1 (block_group_size) or 1 for true.
        if not any(value == a and type(value) is type(a) for a in rule.accepted):
            raise _reject(family, key, value, rule.meaning, absent=key not in d)


def _warn_unknown(family: str, d: Mapping[str, Any], *known: Iterable[str]) -> None:
    names = set(COMMON_HARMLESS).union(*known)
    unknown = sorted(k for k in d if k not in names)
    if unknown:
        log.warning("%s config.json: keys this loader does not know, kept as they are (check they do not "
                    "change the model): %s", family, ", ".join(unknown))


def check_llada(d: dict[str, Any]) -> int:
    """Raise ValueError for a LLaDA maths key with a value not implemented; returns the K/V head count
    (LLaDA's `effective_n_kv_heads`: n_kv_heads, or 1 / n_heads from multi_query_attention)."""
    _check_rules("LLaDA", d, LLADA_RULES)
    n_heads, n_kv, mqa = d["n_heads"], d.get("n_kv_heads"), d.get("multi_query_attention")
    if mqa is not None and not isinstance(mqa, bool):
        raise _reject("LLaDA", "multi_query_attention", mqa, "null, true or false")
    if n_kv is None:
        kv = 1 if mqa else n_heads
    else:
        kv = n_kv
        if mqa is not None and n_kv != (1 if mqa else n_heads):
            raise _reject("LLaDA", "multi_query_attention", mqa,
                          f"a value consistent with n_kv_heads={n_kv} (LLaDA refuses this pair too)")
    _warn_unknown("LLaDA", d, LLADA_RULES, LLADA_FIELDS, LLADA_HARMLESS)
    return kv


def check_qwen2(family: str, d: dict[str, Any]) -> None:
    """Raise ValueError for a Dream / Qwen2 maths key with a value not implemented."""
    _check_rules(family, d, QWEN2_RULES)
    rope = d.get("rope_parameters") or {}
    # transformers >= 5 writes `rope_parameters: {rope_type, rope_theta}` instead of a top-level
    # `rope_theta` and `rope_scaling`.
    if rope.get("rope_type", "default") != "default":
        raise _reject(family, "rope_parameters.rope_type", rope["rope_type"], "unscaled RoPE (rope_type default)")
    for k in rope:
        if k not in ("rope_type", "rope_theta"):
            raise _reject(family, f"rope_parameters.{k}", rope[k], "plain RoPE (only rope_type and rope_theta)")
    scaling = d.get("rope_scaling")
    if scaling and (not isinstance(scaling, dict) or (scaling.get("rope_type") or scaling.get("type")) != "default"):
        raise _reject(family, "rope_scaling", scaling, "unscaled RoPE (rope_scaling null)")
    head_dim = d.get("head_dim")
    if head_dim is not None and head_dim != d["hidden_size"] // d["num_attention_heads"]:
        raise _reject(family, "head_dim", head_dim, "head_dim = hidden_size / num_attention_heads")
    for t in d.get("layer_types") or []:
        if t != "full_attention":
            raise _reject(family, "layer_types", d["layer_types"], "full_attention in every layer")
    _warn_unknown(family, d, QWEN2_RULES, QWEN2_FIELDS, QWEN2_HARMLESS)


# ---- Orthus and NextStep: the same policy, as per-key predicates (models/orthus/config.py, nextstep/config.py)

@dataclass(frozen=True, slots=True)
class Accept:
    """The values of one maths-changing key that we implement. `values`: the accepted values (compared
    with ==; a key set to null counts as absent); or `test`, a predicate, with `means` saying what it accepts."""

    values: tuple[Any, ...] = ()
    test: Callable[[Any], bool] | None = None
    means: str = ""

    def ok(self, v: Any) -> bool:
        if v is None:
            return True
        if self.test is not None:
            return self.test(v)
        return any(v == a and type(v) is type(a) for a in self.values) or (
            # JSON has one number type: 1.0 for 1 is the same setting
            not isinstance(v, bool) and isinstance(v, int | float) and any(
                not isinstance(a, bool) and isinstance(a, int | float) and v == a for a in self.values))

    def describe(self) -> str:
        return self.means or " or ".join(repr(a) for a in self.values)


def check_config(where: str, d: Mapping[str, Any], consumed: Iterable[str], maths: Mapping[str, Accept],
                 harmless: Iterable[str]) -> dict[str, Any]:
    """Raise ValueError for the first maths key whose value is not implemented, warn of unknown keys (the
    policy above); return what goes to `extra`: every key not consumed into the config's fields."""
    consumed, harmless = set(consumed), set(harmless)
    for k, v in d.items():
        if k not in consumed and k in maths and not maths[k].ok(v):
            raise ValueError(f"{where}: config key {k!r} = {v!r} is not implemented "
                             f"(implemented: {maths[k].describe()})")
    _warn_unknown(where, d, consumed, maths, harmless)
    return {k: v for k, v in d.items() if k not in consumed}
