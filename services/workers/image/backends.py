"""The image models behind the image and understanding workers, with one calling convention each
(the conventions of models/bench/image.py, the working reference).

A checkpoint directory holds the model, `tokenizer.json` and the shared VAE in `vae/`. Every request
in a batch gets its own seeded generator, so an image does not depend on what it was batched with
(and a retried job repeats it). Rows of one call share steps and guidance scales: the batcher keys
requests on them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from models.nextstep.generate import GenerationConfig
from models.nextstep.generate import edit_image as ns_edit
from models.nextstep.generate import text_to_image as ns_t2i
from models.nextstep.model import NextStep
from models.nextstep.vae import ImageTokenizer, from_uint8, to_uint8
from models.orthus.model import Orthus
from models.orthus.prompt import build_prompt
from models.tokenizer import TextTokenizer

PatchHook = Callable[[int, torch.Tensor], None]  # (patches done, newest tokens [B, C]); may raise to stop


@dataclass(slots=True)
class ImageJob:
    """One validated image request, as the model thread sees it."""

    kind: str  # "t2i" | "edit"
    text: str  # prompt or instruction
    steps: int
    guidance_scale: float
    image_guidance_scale: float  # edit only (0 for t2i, so it does not split batches)
    seed: int
    width: int  # output size (the model generates at its resolution; the result is resampled)
    height: int
    preview: bool
    source: np.ndarray | None = None  # edit: uint8 (res, res, 3)

    @property
    def batch_key(self) -> tuple[str, int, float, float]:
        return (self.kind, self.steps, self.guidance_scale, self.image_guidance_scale)


class ImageBackend(Protocol):
    name: str

    def generate(self, jobs: Sequence[ImageJob], hook: PatchHook | None) -> torch.Tensor:
        """Images (B, 3, res, res) in [-1, 1] for jobs of one batch key."""
        ...


@dataclass(slots=True)
class Loaded:
    """A checkpoint directory's parts."""

    vae: ImageTokenizer
    tokenizer: TextTokenizer
    resolution: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.vae.grid(self.resolution, self.resolution)

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> VAE tokens (B, N, C)."""
        p = next(self.vae.parameters())
        return self.vae.encode(from_uint8(torch.from_numpy(images)).to(p.device, p.dtype))

    def decode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """VAE tokens (B, N, C) -> uint8 (B, res, res, 3)."""
        p = next(self.vae.parameters())
        return to_uint8(self.vae.decode(tokens.to(p.device, p.dtype), self.grid)).cpu().numpy()


def load_parts(model_dir: Path, resolution: int, device: str, dtype: torch.dtype) -> Loaded:
    for need in ("tokenizer.json", "vae/config.json"):
        if not (model_dir / need).exists():
            raise FileNotFoundError(f"{model_dir / need} not found: an image checkpoint directory holds the model, "
                                    "tokenizer.json and vae/ (python -m models.training.images)")
    vae = ImageTokenizer.from_pretrained(model_dir / "vae", dtype=dtype).to(device).eval()
    loaded = Loaded(vae, TextTokenizer(model_dir), resolution)
    loaded.grid  # noqa: B018 - raises now if the resolution does not fit the VAE
    return loaded


def generators(jobs: Sequence[ImageJob]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(j.seed) for j in jobs]


class OrthusBackend:
    name = "orthus"

    def __init__(self, model: Orthus, parts: Loaded) -> None:
        self.model, self.parts = model, parts
        grid = parts.grid
        self.num_patches = grid[0] * grid[1]

    def generate(self, jobs: Sequence[ImageJob], hook: PatchHook | None) -> torch.Tensor:
        cfg, j0, enc = self.model.config, jobs[0], self.parts.tokenizer.encode
        if j0.kind == "t2i":
            prompts = [build_prompt(cfg, enc(j.text)) for j in jobs]
            z = self.model.generate_image(prompts, build_prompt(cfg), j0.guidance_scale, j0.steps, generators(jobs),
                                          self.num_patches, on_patch=hook)
        else:
            src = self.parts.encode_images(np.stack([j.source for j in jobs])).to(self.model.device)  # type: ignore[misc]
            z = self.model.edit_image(list(src), [enc(j.text) for j in jobs], j0.guidance_scale,
                                      j0.image_guidance_scale, j0.steps, generators(jobs), self.num_patches,
                                      on_patch=hook)
        p = next(self.parts.vae.parameters())
        return self.parts.vae.decode(z.to(p.device, p.dtype), self.parts.grid)


class NextStepBackend:
    name = "nextstep"

    def __init__(self, model: NextStep, parts: Loaded) -> None:
        self.model, self.parts = model, parts

    def generate(self, jobs: Sequence[ImageJob], hook: PatchHook | None) -> torch.Tensor:
        j0, enc, res = jobs[0], self.parts.tokenizer.encode, self.parts.resolution
        # The tiny models were trained with an empty negative prompt (training/images/nextstep.py).
        gen = GenerationConfig(cfg_scale=j0.guidance_scale, cfg_img_scale=j0.image_guidance_scale or 1.0,
                               steps=j0.steps, negative_prompt="")
        texts = [j.text for j in jobs]
        if j0.kind == "t2i":
            return ns_t2i(self.model, self.parts.vae, enc, texts, res, res, gen, generators(jobs), on_token=hook)
        p = next(self.parts.vae.parameters())
        src = from_uint8(torch.from_numpy(np.stack([j.source for j in jobs]))).to(p.device, p.dtype)  # type: ignore[misc]
        return ns_edit(self.model, self.parts.vae, enc, src, texts, gen, generators(jobs), on_token=hook)


def load_backend(backend: str, model_dir: Path, resolution: int, device: str = "cpu",
                 dtype: torch.dtype = torch.float32) -> tuple[ImageBackend, Loaded]:
    from models.nextstep.checkpoint import load_nextstep
    from models.orthus.checkpoint import load_orthus

    parts = load_parts(model_dir, resolution, device, dtype)
    if backend == "orthus":
        return OrthusBackend(load_orthus(model_dir, dtype=dtype, device=device).eval(), parts), parts
    if backend == "nextstep":
        return NextStepBackend(load_nextstep(model_dir, dtype=dtype, device=device), parts), parts
    raise ValueError(f"unknown image backend {backend!r}")
