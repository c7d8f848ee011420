"""What the image backends take from a checkpoint's tokenizer to prompt like the originals (issue 24):
text encoded in the context of the special token before it, BOS / sep / <|image_area|> ids."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers

from models.images.nextstep import prompt_specials as nextstep_specials
from models.images.orthus import prompt_specials as orthus_specials
from models.images.orthus import question_ids
from models.images.parts import ContextEncoder
from models.nextstep.conftest import encode, tiny_model, tiny_vae
from models.nextstep.generate import GenerationConfig, edit_image_tokens
from models.orthus.config import OrthusConfig
from models.tokenizer import TextTokenizer

SPECIALS = ["<s>", "<reserved08706>", "<racm3:break>", "<eoss>", "<image>", "<|image_area|>"]


def _tokenizer_dir(tmp: Path, tokenizer_config: dict[str, Any]) -> Path:
    """A SentencePiece-like tokenizer (Metaspace, prefix space on the string's first segment only)."""
    vocab = {t: i for i, t in enumerate(["<unk>", *SPECIALS, "▁how", "how", "▁many", "many", "3", "2", "*"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="first", split=True)
    tok.add_special_tokens([AddedToken(t, special=True) for t in SPECIALS])
    tmp.mkdir(parents=True, exist_ok=True)
    tok.save(str(tmp / "tokenizer.json"))
    (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return tmp


def test_text_after_a_special_token_is_encoded_in_context(tmp_path: Path) -> None:
    tok = TextTokenizer(_tokenizer_dir(tmp_path, {}))
    enc = ContextEncoder(tok)
    eoss, how, how_, many_ = (tok.token_id(t) for t in ("<eoss>", "▁how", "how", "▁many"))
    assert enc("how many") == [how, many_]  # alone: SentencePiece's prefix space
    assert enc.after(eoss, "how many") == [how_, many_]  # as in "<eoss>how many": none
    assert enc.after(None, "how many") == enc("how many") and enc.after(eoss, "") == []


def test_orthus_question_follows_eoi(tmp_path: Path) -> None:
    """Brief §1.3: "<image>question" is one string: the question is tokenized after <eoss> (EOI)."""
    tok = TextTokenizer(_tokenizer_dir(tmp_path, {}))
    cfg = OrthusConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                       num_kv_heads=4, image_token_id=5, boi_token_id=3, eoi_token_id=4, sep_token_id=2,
                       image_token_offset=20, codebook_size=8, latent_dim=8)
    assert question_ids(cfg, tok, ContextEncoder(tok), "how many") == [tok.token_id("how"), tok.token_id("▁many")]
    tiny = OrthusConfig(**{**{f: getattr(cfg, f) for f in ("vocab_size", "hidden_size", "intermediate_size",
                                                          "num_layers", "num_heads", "num_kv_heads", "image_token_id",
                                                          "boi_token_id", "eoi_token_id", "sep_token_id",
                                                          "image_token_offset", "codebook_size", "latent_dim")},
                           "prompt_format": "tessera"})
    assert question_ids(tiny, tok, None, "how many") == tok.encode("how many")  # as the tiny models were trained


def _orthus(tmp_path: Path, tokenizer_config: dict[str, Any]) -> tuple[Any, Any]:
    d = _tokenizer_dir(tmp_path, tokenizer_config)
    cfg = OrthusConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4,
                       num_kv_heads=4, image_token_id=5, boi_token_id=3, eoi_token_id=4, sep_token_id=9,
                       bos_token_id=7, image_token_offset=20, codebook_size=8, latent_dim=8)
    model, parts = SimpleNamespace(config=cfg), SimpleNamespace(tokenizer=TextTokenizer(d))
    return model, orthus_specials(model, parts, d)  # type: ignore[arg-type]


def test_orthus_bos_and_sep_come_from_the_tokenizer(tmp_path: Path) -> None:
    """The original's processor appends tokenizer.sep_token and its tokenizer adds BOS (brief §1.1-§1.3)."""
    model, ctx = _orthus(tmp_path / "a", {"bos_token": "<s>", "sep_token": {"content": "<reserved08706>"}})
    assert (model.config.bos_token_id, model.config.sep_token_id) == (1, 2)  # ids of <s>, <reserved08706>
    assert isinstance(ctx, ContextEncoder)
    model, _ = _orthus(tmp_path / "b", {"bos_token": "<s>", "add_bos_token": False})
    assert model.config.bos_token_id is None and model.config.sep_token_id == 9  # no sep_token: config's
    with pytest.raises(ValueError, match="<missing>"):
        _orthus(tmp_path / "c", {"bos_token": "<missing>"})


def test_nextstep_bos_and_image_area_come_from_the_tokenizer(tmp_path: Path) -> None:
    """The new pipeline prepends tokenizer.bos_token when set; the prefix is the string "<|image_area|>"."""
    d = _tokenizer_dir(tmp_path / "a", {"bos_token": None})
    model = tiny_model()
    nextstep_specials(model, SimpleNamespace(tokenizer=TextTokenizer(d)), d)  # type: ignore[arg-type]
    assert model.config.bos_token_id is None and model.config.image_area_id == SPECIALS.index("<|image_area|>") + 1
    d = _tokenizer_dir(tmp_path / "b", {"bos_token": "<s>"})
    model = tiny_model()
    nextstep_specials(model, SimpleNamespace(tokenizer=TextTokenizer(d)), d)  # type: ignore[arg-type]
    assert model.config.bos_token_id == 1


def test_nextstep_edit_with_two_rows_runs() -> None:
    """cfg_img 1 in the original format: [cond, negative] rows, the source image in the first group only."""
    model, vae = tiny_model(), tiny_vae()
    src = vae.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
    grid = vae.grid(32, 32)
    out = {}
    for original in (True, False):
        gen = GenerationConfig(cfg_scale=3.0, cfg_img_scale=1.0, steps=2, original_rows=original)
        out[original] = edit_image_tokens(model, encode, src, ["red"], grid, grid, gen,
                                          torch.Generator().manual_seed(0))
    assert out[True].shape == out[False].shape == (1, grid[0] * grid[1], 64)
    assert not torch.equal(out[True], out[False])  # another guidance: v_neg + w (v_c - v_neg)
