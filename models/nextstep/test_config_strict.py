"""NextStep config.json is read strictly, and prompts are laid out like the original pipelines' (issue 24)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from models.nextstep.checkpoint import read_config
from models.nextstep.config import NextStepConfig
from models.nextstep.generate import GenerationConfig, edit_groups, edit_rows, t2i_rows
from models.nextstep.test_checkpoint import RELEASED

CHECKPOINTS = Path(__file__).resolve().parents[2] / "checkpoints"

# stepfun-ai/NextStep-1-Large's config.json as faithfully as the brief lets us write it: §2.1 gives
# NextStep-1.1's fields (RELEASED) and says the NextStep-1-Large(-Pretrain) config "shows the same
# fields, with latent_size 64 and base_image_grid_size 32"; the remaining keys are the ones the
# original NextStepConfig(LlamaConfig) (transformers 4.49, §2.4) writes at their released values.
NEXTSTEP_1_LARGE: dict[str, Any] = {
    **RELEASED, "latent_size": 64, "base_image_grid_size": 32, "use_gen_pos_embed": False,
    "vae_name_or_path": "stepfun-ai/NextStep-1-f8ch16-Tokenizer", "attention_dropout": 0.0,
    "initializer_range": 0.02, "pretraining_tp": 1, "rope_scaling": None, "tie_word_embeddings": False,
    "torch_dtype": "bfloat16", "transformers_version": "4.49.0", "use_cache": True,
}


def test_nextstep_1_large_config_loads() -> None:
    cfg = NextStepConfig.from_hf(NEXTSTEP_1_LARGE)
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim) == (5120, 48, 40, 8, 128)
    assert cfg.attention_bias and not cfg.o_attention_bias and cfg.rope_theta == 1e6
    assert (cfg.boi, cfg.eoi, cfg.image_placeholder_id, cfg.bos_token_id) == (151667, 151668, 151669, 151643)
    assert (cfg.latent_size, cfg.base_image_grid_size, cfg.token_dim) == (64, 32, 64)
    assert cfg.prompt_format == "original"
    assert NextStepConfig.from_hf(json.loads(json.dumps(cfg.to_hf()))) == cfg


def test_tiny_checkpoint_keeps_its_format() -> None:
    cfg = read_config(CHECKPOINTS / "shapes-nextstep")
    assert cfg.prompt_format == "tessera" and cfg.to_hf()["prompt_format"] == "tessera"


def test_original_bias_defaults() -> None:
    """NextStepConfig(LlamaConfig): attention_bias defaults to False, o_attention_bias follows it."""
    base = {k: v for k, v in NEXTSTEP_1_LARGE.items() if k not in ("attention_bias", "o_attention_bias")}
    cfg = NextStepConfig.from_hf(base)
    assert not cfg.attention_bias and not cfg.o_attention_bias
    with pytest.raises(ValueError, match="o_attention_bias"):  # q/k/v bias and hence o bias: not implemented
        NextStepConfig.from_hf({**base, "attention_bias": True})


@pytest.mark.parametrize(("key", "value"), [
    ("hidden_act", "gelu"), ("mlp_bias", True), ("rope_scaling", {"rope_type": "yarn", "factor": 4.0}),
    ("rope_parameters", {"rope_type": "llama3"}), ("use_sliding_window", True),
    ("layer_types", ["sliding_attention"] * 48), ("pretraining_tp", 2), ("use_gen_pos_embed", True),
    ("use_2d_rope", True), ("genloss_type", "diffusion"), ("head_dim", 64), ("o_attention_bias", True),
    ("prompt_format", "chatml"),
])
def test_unimplemented_values_are_rejected(key: str, value: Any) -> None:
    with pytest.raises(ValueError) as err:
        NextStepConfig.from_hf({**NEXTSTEP_1_LARGE, key: value})
    assert key in str(err.value) and repr(value) in str(err.value)


def test_unknown_keys_warn_and_travel(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="models.config_keys"):
        cfg = NextStepConfig.from_hf({**NEXTSTEP_1_LARGE, "some_new_switch": 1})
    assert "some_new_switch" in caplog.text and cfg.to_hf()["some_new_switch"] == 1


# ---- prompt formats ------------------------------------------------------------------------------

BOS, AREA, BOI, EOI, HOLD = 151643, 151666, 151667, 151668, 151669


def _enc(text: str) -> list[int]:
    """A stand-in tokenizer: one id per character."""
    return [1000 + ord(c) for c in text]


class _InContext:
    """An encoder with `after` (models.images.parts.ContextEncoder's interface) that marks the context."""

    def __call__(self, text: str) -> list[int]:
        return _enc(text)

    def after(self, prev: int | None, text: str) -> list[int]:
        return [-(prev or 0), *_enc(text)]  # -prev: the special token this text was encoded after


def _model() -> Any:
    return SimpleNamespace(config=NextStepConfig.from_hf(NEXTSTEP_1_LARGE))


def _area(grid: str = "32*32") -> list[int]:
    return [AREA, *_enc(grid)]


def test_t2i_rows_are_the_originals() -> None:
    """Brief §2.2: captions = [c + " " + positive_prompt]; the new pipeline prepends tokenizer.bos_token;
    then tokenize("<|image_area|>32*32") (bos stripped) + [boi]; the guidance row is the negative prompt."""
    gen = GenerationConfig(cfg_scale=7.5, positive_prompt="best quality.", negative_prompt="blurry")
    rows = t2i_rows(_model(), _enc, ["a cat"], (32, 32), gen)
    assert rows == [[BOS, *_enc("a cat best quality."), *_area(), BOI], [BOS, *_enc("blurry"), *_area(), BOI]]
    assert t2i_rows(_model(), _enc, ["a cat"], (32, 32), GenerationConfig(cfg_scale=1.0)) == \
        [[BOS, *_enc("a cat"), *_area(), BOI]]  # cfg 1: no guidance row


def test_text_is_encoded_where_it_sits_in_the_original_string() -> None:
    """bos_token + caption, "<|image_area|>" + "32*32", image_str + instruction: each text after its token."""
    gen = GenerationConfig(cfg_scale=7.5, cfg_img_scale=2.0, negative_prompt="")
    t2i = t2i_rows(_model(), _InContext(), ["a cat"], (32, 32), gen)
    assert t2i[0] == [BOS, -BOS, *_enc("a cat"), AREA, -AREA, *_enc("32*32"), BOI]
    edit = edit_rows(_model(), _InContext(), ["make it red"], (2, 2), (32, 32), gen)
    image = [AREA, -AREA, *_enc("2*2"), BOI, *[HOLD] * 4, EOI]
    assert edit[0] == [BOS, *image, -EOI, *_enc("make it red"), AREA, -AREA, *_enc("32*32"), BOI]


def test_edit_rows_are_the_originals() -> None:
    """Brief §2.2/§2.3: caption "<image>" + instruction with <image> -> image_str(h, w) =
    "<|image_area|>{h/16}*{w/16}" + boi + placeholders + eoi; CFG rows [cond, image_str + negative,
    negative] with both scales, [cond, negative] with cfg_img 1, [cond] with cfg 1."""
    image = [AREA, *_enc("2*2"), BOI, *[HOLD] * 4, EOI]
    out = [*_area(), BOI]
    cond = [BOS, *image, *_enc("make it red"), *out]
    image_neg = [BOS, *image, *_enc("Copy original image."), *out]
    neg = [BOS, *_enc("Copy original image."), *out]

    def rows(cfg: float, cfg_img: float, original: bool = True) -> list[list[int]]:
        gen = GenerationConfig(cfg_scale=cfg, cfg_img_scale=cfg_img, negative_prompt="Copy original image.",
                               original_rows=original)
        return edit_rows(_model(), _enc, ["make it red"], (2, 2), (32, 32), gen)

    assert rows(7.5, 2.0) == [cond, image_neg, neg]
    assert rows(7.5, 1.0) == [cond, neg]
    assert rows(1.0, 2.0) == [cond]
    assert rows(7.5, 1.0, original=False) == [cond, image_neg, neg]  # the tiny models' three rows
    assert edit_groups(GenerationConfig(cfg_scale=7.5, cfg_img_scale=1.0)) == 2
