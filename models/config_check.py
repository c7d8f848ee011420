"""Strict reading of a checkpoint's config.json: every key is either implemented, checked against the
values we implement, or known not to change the maths; anything else is refused by name and value.

A config key we silently ignored would load a model that computes something else without an error
(issue 24). Each model config declares three sets of keys and calls `check_config`:
- consumed: read into its dataclass (their values are validated there);
- maths: keys that change what the network computes, each with the values we implement (`Accept`);
- harmless: keys that do not change the maths of the parts we run (training-only settings, metadata,
  or parts we carry but do not run); they are kept in `extra` and written back unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

# What `PretrainedConfig.to_dict` may write for any model (metadata, generation defaults that our own
# decoding loops never read, fields of encoder-decoder or classification heads we do not build).
GENERIC_HF_KEYS = frozenset({
    "_name_or_path", "architectures", "auto_map", "torch_dtype", "dtype", "transformers_version", "use_cache",
    "initializer_range", "output_attentions", "output_hidden_states", "return_dict", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "pruned_heads", "id2label", "label2id", "problem_type", "finetuning_task",
    "tokenizer_class", "prefix", "task_specific_params", "chunk_size_feed_forward", "is_encoder_decoder",
    "is_decoder", "add_cross_attention", "tie_encoder_decoder", "cross_attention_hidden_size",
    "decoder_start_token_id", "sep_token_id", "max_length", "min_length", "do_sample", "early_stopping",
    "num_beams", "num_beam_groups", "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size", "encoder_no_repeat_ngram_size",
    "bad_words_ids", "num_return_sequences", "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty", "suppress_tokens",
    "begin_suppress_tokens",
})


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
    """Raise ValueError for the first key whose value is not implemented; return what goes to `extra`
    (the keys neither consumed nor modelled: maths keys at an accepted value, and harmless keys)."""
    consumed, harmless = set(consumed), set(harmless)
    for k, v in d.items():
        if k in consumed:
            continue
        if k in maths:
            if not maths[k].ok(v):
                raise ValueError(f"{where}: config key {k!r} = {v!r} is not implemented "
                                 f"(implemented: {maths[k].describe()})")
        elif k not in harmless:
            raise ValueError(f"{where}: unknown config key {k!r} = {v!r}: Tessera does not know whether it "
                             "changes the model, so it refuses the checkpoint (remove the key if it does not)")
    return {k: v for k, v in d.items() if k not in consumed}
