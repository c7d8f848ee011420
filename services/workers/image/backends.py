"""The image models behind the image and understanding workers, with one calling convention each
(the conventions of lab/bench/image.py, the working reference).

A checkpoint directory holds the model, `tokenizer.json` and the shared VAE in `vae/`. Rows of one
call share steps and guidance scales: the batcher keys requests on them.

An image must not depend on what it was batched with (and a retried job repeats it):
- every request gets its own seeded generator;
- its prompt rows are left-padded to `padded_length(job)`, its own length rounded up to the bucket,
  and the engine batches only requests of one bucket. Padding to the batch's longest row instead
  gives a row other absolute positions (NextStep counts padding, like the reference) and another
  padded key length for SDPA, so other rounding, which the autoregressive loop, the sampler and CFG
  amplify: in bfloat16 a short prompt batched with a long one came out up to 12/255 off on the tiny
  checkpoints and 83/255 on the trained NextStep. Buckets make that exact, at the price of a few pad
  tokens per row and of not batching prompts of different buckets together;
- Orthus embeds fed-back patches one request at a time (`models.orthus.generate.patch_embeddings`);
- the VAE encodes and decodes one image at a time (see `Loaded`).
With these, bfloat16 on CPU gives bit-identical images alone and batched. What remains is the kernels'
own row-count dependence, never padding: float32 BLAS (MKL) takes other paths for few rows, ≈1e-5 on
the tokens and at most 1/255 after decoding; GPU GEMMs pick tiles by batch size. Removing it would
take batch-invariant kernels or running each request alone, i.e. giving up batching.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from models.nextstep.generate import GenerationConfig, edit_rows, t2i_rows
from models.nextstep.generate import edit_image_tokens as ns_edit_tokens
from models.nextstep.generate import text_to_image_tokens as ns_t2i_tokens
from models.nextstep.model import NextStep
from models.nextstep.vae import ImageTokenizer, from_uint8, to_uint8
from models.orthus.model import Orthus
from models.orthus.prompt import Prompt, build_prompt
from models.orthus.prompt import edit_rows as orthus_edit_rows
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
    # The length its prompt rows are padded to (ImageBackend.padded_length), fixed once when the
    # request is planned; 0 = not planned yet (the backend works it out).
    pad_to: int = 0

    @property
    def batch_key(self) -> tuple[str, int, float, float, int]:
        return (self.kind, self.steps, self.guidance_scale, self.image_guidance_scale, self.pad_to)


class ImageBackend(Protocol):
    name: str

    def padded_length(self, job: ImageJob) -> int:
        """The length the job's prompt rows are padded to: part of its batch key."""
        ...

    def generate(self, jobs: Sequence[ImageJob], hook: PatchHook | None) -> torch.Tensor:
        """Images (B, 3, res, res) in [-1, 1] for jobs of one batch key."""
        ...


def round_up(n: int, bucket: int) -> int:
    return -(-n // bucket) * bucket


@dataclass(slots=True)
class Loaded:
    """A checkpoint directory's parts."""

    vae: ImageTokenizer
    tokenizer: TextTokenizer
    resolution: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.vae.grid(self.resolution, self.resolution)

    # The VAE runs one image at a time: its convolutions round differently for another batch size
    # (bfloat16: up to 5/255 on the tiny checkpoints), and it is cheap next to the autoregressive loop.

    def encode_images(self, images: np.ndarray) -> torch.Tensor:
        """uint8 (B, H, W, 3) -> VAE tokens (B, N, C)."""
        p = next(self.vae.parameters())
        x = from_uint8(torch.from_numpy(images)).to(p.device, p.dtype)
        return torch.cat([self.vae.encode(x[i:i + 1]) for i in range(x.shape[0])])

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """VAE tokens (B, N, C) -> images (B, 3, res, res) in [-1, 1]."""
        p = next(self.vae.parameters())
        tokens = tokens.to(p.device, p.dtype)
        return torch.cat([self.vae.decode(tokens[i:i + 1], self.grid) for i in range(tokens.shape[0])])

    def decode_tokens(self, tokens: torch.Tensor) -> np.ndarray:
        """VAE tokens (B, N, C) -> uint8 (B, res, res, 3)."""
        return to_uint8(self.decode(tokens)).cpu().numpy()


def native_resolution(model_dir: Path) -> int:
    """The square size a checkpoint was trained at: its VAE's sample_size. The shapes models' tokens each
    cover one cell of their world, so another size would cut shapes across tokens."""
    try:
        return int(json.loads((model_dir / "vae" / "config.json").read_text())["sample_size"])
    except (OSError, KeyError, ValueError) as e:
        raise FileNotFoundError(f"{model_dir / 'vae' / 'config.json'} gives no sample_size ({e}); "
                                "set model.resolution") from e


def load_parts(model_dir: Path, resolution: int, device: str, dtype: torch.dtype) -> Loaded:
    """The VAE and tokenizer of `model_dir`; resolution 0: the checkpoint's own (native_resolution)."""
    for need in ("tokenizer.json", "vae/config.json"):
        if not (model_dir / need).exists():
            raise FileNotFoundError(f"{model_dir / need} not found: an image checkpoint directory holds the model, "
                                    "tokenizer.json and vae/ (python -m lab.training.images)")
    vae = ImageTokenizer.from_pretrained(model_dir / "vae", dtype=dtype).to(device).eval()
    loaded = Loaded(vae, TextTokenizer(model_dir), resolution or native_resolution(model_dir))
    loaded.grid  # noqa: B018 - raises now if the resolution does not fit the VAE
    return loaded


def generators(jobs: Sequence[ImageJob]) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(j.seed) for j in jobs]


class OrthusBackend:
    name = "orthus"

    def __init__(self, model: Orthus, parts: Loaded, pad_bucket: int = 32) -> None:
        self.model, self.parts, self.pad_bucket = model, parts, pad_bucket
        grid = parts.grid
        self.num_patches = grid[0] * grid[1]

    def _rows(self, job: ImageJob) -> list[Prompt]:
        """The job's CFG rows as `generate_image` / `edit_image` build them (any source: only lengths matter)."""
        cfg, ids = self.model.config, self.parts.tokenizer.encode(job.text)
        if job.kind == "t2i":
            return [build_prompt(cfg, ids), build_prompt(cfg)]
        return orthus_edit_rows(cfg, torch.zeros(self.num_patches, cfg.latent_dim), ids)

    def padded_length(self, job: ImageJob) -> int:
        return round_up(max(len(r.ids) for r in self._rows(job)), self.pad_bucket)

    def generate(self, jobs: Sequence[ImageJob], hook: PatchHook | None) -> torch.Tensor:
        cfg, j0, enc = self.model.config, jobs[0], self.parts.tokenizer.encode
        pad_to = max(j.pad_to or self.padded_length(j) for j in jobs)  # one value under the batch key
        if j0.kind == "t2i":
            prompts = [build_prompt(cfg, enc(j.text)) for j in jobs]
            z = self.model.generate_image(prompts, build_prompt(cfg), j0.guidance_scale, j0.steps, generators(jobs),
                                          self.num_patches, on_patch=hook, pad_to=pad_to)
        else:
            src = self.parts.encode_images(np.stack([j.source for j in jobs])).to(self.model.device)  # type: ignore[misc]
            z = self.model.edit_image(list(src), [enc(j.text) for j in jobs], j0.guidance_scale,
                                      j0.image_guidance_scale, j0.steps, generators(jobs), self.num_patches,
                                      on_patch=hook, pad_to=pad_to)
        return self.parts.decode(z)


class NextStepBackend:
    name = "nextstep"

    def __init__(self, model: NextStep, parts: Loaded, pad_bucket: int = 32) -> None:
        self.model, self.parts, self.pad_bucket = model, parts, pad_bucket

    @staticmethod
    def _gen(job: ImageJob) -> GenerationConfig:
        # The tiny models were trained with an empty negative prompt (training/images/nextstep.py).
        return GenerationConfig(cfg_scale=job.guidance_scale, cfg_img_scale=job.image_guidance_scale or 1.0,
                                steps=job.steps, negative_prompt="")

    def padded_length(self, job: ImageJob) -> int:
        m, enc, grid, gen = self.model, self.parts.tokenizer.encode, self.parts.grid, self._gen(job)
        rows = (t2i_rows(m, enc, [job.text], grid, gen) if job.kind == "t2i"
                else edit_rows(m, enc, [job.text], grid, grid, gen))
        return round_up(max(len(r) for r in rows), self.pad_bucket)

    def generate(self, jobs: Sequence[ImageJob], hook: PatchHook | None) -> torch.Tensor:
        j0, enc, grid, gen = jobs[0], self.parts.tokenizer.encode, self.parts.grid, self._gen(jobs[0])
        pad_to = max(j.pad_to or self.padded_length(j) for j in jobs)  # one value under the batch key
        texts = [j.text for j in jobs]
        if j0.kind == "t2i":
            tokens = ns_t2i_tokens(self.model, enc, texts, grid, gen, generators(jobs), hook, pad_to)
        else:
            src = self.parts.encode_images(np.stack([j.source for j in jobs]))  # type: ignore[misc]
            tokens = ns_edit_tokens(self.model, enc, src, texts, grid, grid, gen, generators(jobs), hook, pad_to)
        return self.parts.decode(tokens)


def load_backend(backend: str, model_dir: Path, resolution: int, device: str = "cpu",
                 dtype: torch.dtype = torch.float32, pad_bucket: int = 32) -> tuple[ImageBackend, Loaded]:
    from models.nextstep.checkpoint import load_nextstep
    from models.orthus.checkpoint import load_orthus

    parts = load_parts(model_dir, resolution, device, dtype)
    if backend == "orthus":
        return OrthusBackend(load_orthus(model_dir, dtype=dtype, device=device).eval(), parts, pad_bucket), parts
    if backend == "nextstep":
        return NextStepBackend(load_nextstep(model_dir, dtype=dtype, device=device), parts, pad_bucket), parts
    raise ValueError(f"unknown image backend {backend!r}")
