"""(f) Editing builds three CFG rows per request; understanding returns greedy text ids."""

from __future__ import annotations

import pytest
import torch

from models.orthus.conftest import text_ids
from models.orthus.generate import banned_text_tokens
from models.orthus.model import Orthus
from models.orthus.prompt import Prompt, build_prompt, edit_rows

STEPS = 8


def _image(seed: int, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 8, generator=torch.Generator().manual_seed(seed))


def test_edit_rows_layout(model: Orthus) -> None:
    cfg = model.config
    img, instr = _image(0), text_ids(3, 0)
    full, image_only, empty = edit_rows(cfg, img, instr)
    block = [cfg.boi_token_id, *[cfg.image_token_id] * 4, cfg.eoi_token_id]
    # The instruction first: target patch k then sits a fixed distance after source patch k in both image rows.
    assert full.ids == [cfg.bos_token_id, *instr, *block, cfg.sep_token_id]
    assert image_only.ids == [cfg.bos_token_id, *block, cfg.sep_token_id]
    assert empty.ids == [cfg.bos_token_id, cfg.sep_token_id] and empty.latents is None
    assert torch.equal(full.latents, img) and torch.equal(image_only.latents, img)


def test_edit_batches_three_rows_per_request(model: Orthus, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.orthus.model as model_mod

    seen: list[int] = []
    real = model_mod.image_loop

    def spy(m: Orthus, rows: list[Prompt], guidance: object, *args: object) -> torch.Tensor:
        seen.append(len(rows))
        assert [r.latents is not None for r in rows] == [True, True, True, True, False, False]  # group-major
        return real(m, rows, guidance, *args)

    monkeypatch.setattr(model_mod, "image_loop", spy)
    out = model.edit_image([_image(1), _image(2)], [text_ids(3, 1), text_ids(2, 2)], text_scale=4.0,
                           image_scale=1.5, steps=STEPS, generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    assert seen == [6]
    assert out.shape == (2, model.config.image_seq_length, 8) and torch.isfinite(out).all()


def test_edit_unit_scales_equal_the_full_row(model: Orthus) -> None:
    """text_scale = image_scale = 1 collapses pix2pix CFG to the image+instruction row alone."""
    cfg = model.config
    img, instr = _image(3), text_ids(3, 3)
    edited = model.edit_image([img], [instr], 1.0, 1.0, steps=STEPS, generator=torch.Generator().manual_seed(0))
    plain = model.generate_image([build_prompt(cfg, instr, img)], None, steps=STEPS,
                                 generator=torch.Generator().manual_seed(0))
    guided = model.edit_image([img], [instr], 4.0, 1.5, steps=STEPS, generator=torch.Generator().manual_seed(0))
    assert (edited - plain).abs().max().item() < 1e-4
    assert (guided - plain).abs().max().item() > 1e-2


def _greedy_without_cache(model: Orthus, prompt: Prompt, n: int) -> list[int]:
    """Reference: recompute the whole sequence every step, no cache, no padding."""
    cfg = model.config
    ids = list(prompt.ids)
    banned = banned_text_tokens(model)
    out: list[int] = []
    for _ in range(n):
        with torch.no_grad():
            logits = model(torch.tensor([ids]), [prompt.latents])[1][0, -1]
        logits[banned] = float("-inf")
        tok = int(logits.argmax())
        if tok in (cfg.sep_token_id, cfg.eos_token_id):
            break
        out.append(tok)
        ids.append(tok)
    return out


def test_understanding_produces_text_ids(model: Orthus) -> None:
    cfg = model.config
    prompts = [build_prompt(cfg, _image(4), text_ids(5, 4)), build_prompt(cfg, text_ids(2, 5))]
    answers = model.understand(prompts, max_new_tokens=6)
    assert len(answers) == 2
    banned = set(banned_text_tokens(model).tolist())
    for p, ans in zip(prompts, answers, strict=True):
        assert 0 < len(ans) <= 6 and all(isinstance(t, int) and t not in banned for t in ans)
        assert ans == _greedy_without_cache(model, p, 6)  # batched + KV-cached == naive greedy
    assert model.understand_image(_image(4), text_ids(5, 4), max_new_tokens=6) == answers[0]


def test_understanding_stops_at_sep(model: Orthus) -> None:
    cfg = model.config
    sep = torch.tensor([cfg.sep_token_id])
    model.lm_head.register_forward_hook(lambda _m, _i, out: out.index_fill(-1, sep, 1e4))  # sep always wins
    assert model.understand([build_prompt(cfg, _image(5), text_ids(3, 6))], max_new_tokens=5) == [[]]
