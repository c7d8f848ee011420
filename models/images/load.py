"""`load_backend`: an image backend by name, from its checkpoint directory."""

from __future__ import annotations

from dataclasses import astuple
from pathlib import Path

import torch

from models.images.base import ImageBackend
from models.images.nextstep import NextStepBackend, NextStepSampling
from models.images.orthus import OrthusBackend
from models.images.parts import ImageParts

BACKENDS: dict[str, type[OrthusBackend] | type[NextStepBackend]] = {"orthus": OrthusBackend,
                                                                    "nextstep": NextStepBackend}


def load_backend(backend: str, model_dir: Path, resolution: int = 0, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, pad_bucket: int = 32,
                 nextstep: NextStepSampling | None = None) -> tuple[ImageBackend, ImageParts]:
    """The backend of `model_dir` (model + tokenizer.json + vae/) and its parts; resolution 0: native.
    `nextstep`: NextStep's prompt text and sampler settings (None: the defaults; refused for Orthus)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown image backend {backend!r}; expected one of {tuple(BACKENDS)}")
    if backend == "nextstep":
        b: OrthusBackend | NextStepBackend = NextStepBackend.load(model_dir, resolution, device, dtype, pad_bucket,
                                                                  nextstep)
    elif nextstep is not None and astuple(nextstep) != astuple(NextStepSampling()):
        raise ValueError(f"NextStep sampling settings were given for the {backend!r} backend")
    else:
        b = BACKENDS[backend].load(model_dir, resolution, device, dtype, pad_bucket)
    return b, b.parts
