"""NextStep's prompt text and sampler settings (`NextStepSampling`, the worker's `model.nextstep`):
what each job kind samples with, and that the backend prompts and samples with them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.images import ImageJob, NextStepSampling, load_backend
from models.nextstep.generate import GenerationConfig

torch.set_num_threads(1)


def test_the_defaults_are_the_sampler_the_tiny_models_were_trained_with() -> None:
    # No positive or negative text, shift 1, token LayerNorm on: GenerationConfig's own defaults.
    assert NextStepSampling().generation("t2i", 7.5, 0.0, 50) == GenerationConfig(
        cfg_scale=7.5, cfg_img_scale=1.0, steps=50, original_rows=False)
    assert NextStepSampling().generation("edit", 7.5, 2.0, 50, original_rows=True) == GenerationConfig(
        cfg_scale=7.5, cfg_img_scale=2.0, steps=50, original_rows=True)


def test_each_kind_takes_its_own_negative_prompt_and_shift() -> None:
    s = NextStepSampling(positive_prompt="masterpiece, film grained, best quality.", negative_prompt="lowres",
                         edit_negative_prompt="Copy original image.", shift=1.5, edit_shift=3.2, use_norm=False)
    t2i, edit = s.generation("t2i", 7.5, 0.0, 50), s.generation("edit", 7.5, 2.0, 28)
    assert (t2i.positive_prompt, t2i.negative_prompt, t2i.shift, t2i.use_norm) == (
        "masterpiece, film grained, best quality.", "lowres", 1.5, False)
    assert (edit.positive_prompt, edit.negative_prompt, edit.shift, edit.use_norm, edit.steps) == (
        "masterpiece, film grained, best quality.", "Copy original image.", 3.2, False, 28)


@pytest.mark.parametrize("bad", [{"shift": 0.0}, {"edit_shift": -1.0}, {"shift": float("nan")}, {"edit_shift": 101.0}])
def test_bad_shifts_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=f"{next(iter(bad))} must be in"):
        NextStepSampling(**bad)


def _job(kind: str = "t2i", source: np.ndarray | None = None) -> ImageJob:
    return ImageJob(kind, "a red circle", steps=3, guidance_scale=3.0, image_guidance_scale=1.5 if source is not None
                    else 0.0, seed=7, width=32, height=32, preview=False, source=source)


def test_the_backend_prompts_and_samples_with_them(image_checkpoints: Path) -> None:
    ckpt = image_checkpoints / "shapes-nextstep"
    plain, _ = load_backend("nextstep", ckpt, pad_bucket=1)
    same, _ = load_backend("nextstep", ckpt, pad_bucket=1, nextstep=NextStepSampling())
    worded, _ = load_backend("nextstep", ckpt, pad_bucket=1,
                             nextstep=NextStepSampling(positive_prompt="a blue square", negative_prompt="a circle"))
    shifted, _ = load_backend("nextstep", ckpt, pad_bucket=1, nextstep=NextStepSampling(shift=3.0))
    job = _job()
    # The prompt rows carry the texts: the longest row grows by the positive text's tokens.
    assert worded.padded_length(job) > plain.padded_length(job) == shifted.padded_length(job)
    images = {name: b.generate([job], None) for name, b in
              (("plain", plain), ("same", same), ("worded", worded), ("shifted", shifted))}
    assert torch.equal(images["plain"], images["same"])  # the defaults change nothing
    assert not torch.allclose(images["plain"], images["worded"], atol=1e-3)
    assert not torch.allclose(images["plain"], images["shifted"], atol=1e-3)


def test_editing_uses_the_edit_settings_only(image_checkpoints: Path) -> None:
    ckpt = image_checkpoints / "shapes-nextstep"
    plain, parts = load_backend("nextstep", ckpt, pad_bucket=1)
    t2i_only, _ = load_backend("nextstep", ckpt, pad_bucket=1,
                               nextstep=NextStepSampling(negative_prompt="a circle", shift=3.0))
    edit_only, _ = load_backend("nextstep", ckpt, pad_bucket=1, nextstep=NextStepSampling(edit_shift=3.0))
    side = parts.resolution
    source = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    job = _job("edit", source)
    edited = {n: b.generate([job], None) for n, b in (("plain", plain), ("t2i_only", t2i_only),
                                                      ("edit_only", edit_only))}
    assert torch.equal(edited["plain"], edited["t2i_only"])  # text-to-image settings leave edits alone
    assert not torch.allclose(edited["plain"], edited["edit_only"], atol=1e-3)


def test_orthus_refuses_nextstep_settings(image_checkpoints: Path) -> None:
    with pytest.raises(ValueError, match="NextStep sampling settings were given for the 'orthus' backend"):
        load_backend("orthus", image_checkpoints / "shapes-orthus", nextstep=NextStepSampling(negative_prompt="x"))
    backend, _ = load_backend("orthus", image_checkpoints / "shapes-orthus", nextstep=NextStepSampling())
    assert backend.name == "orthus"
