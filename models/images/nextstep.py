"""NextStep behind the image layer: text-to-image and editing (`ImageBackend`); it has no understanding path.

Prompts are the rows `models.nextstep.generate` builds for the checkpoint's `prompt_format`. With the
"original" format (real checkpoints): BOS is tokenizer_config.json's `bos_token` (the new pipeline
prepends `tokenizer.bos_token` when it is set; config.json's `bos_token_id` only when the key is
absent), `<|image_area|>` is the tokenizer's id for that string, text is encoded where it follows a
special token in the original's string, and edits drop the guidance rows a scale of 1 does not use.
The tiny checkpoints ("tessera") keep the layout they were trained on.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.images.base import ImageJob, PatchHook, generators, round_up
from models.images.parts import ContextEncoder, ImageParts, adopt, load_parts, special_id
from models.nextstep.checkpoint import load_nextstep
from models.nextstep.generate import Encode, GenerationConfig, edit_image_tokens, edit_rows, left_pad, t2i_rows
from models.nextstep.generate import text_to_image_tokens as t2i_tokens
from models.nextstep.head import sample_token
from models.nextstep.model import NextStep, causal_mask
from models.nextstep.vae import token_layer_norm
from models.tokenizer import TextTokenizer

IMAGE_AREA_TOKEN = "<|image_area|>"  # DEFAULT_IMAGE_AREA_TOKEN of the original pipelines


@dataclass(slots=True)
class NextStepSampling:
    """NextStep's prompt text and sampler settings beyond a request's scales and steps: the original
    pipelines' `generate_image` arguments (brief §2.2). The defaults are how the embedded tiny model was
    trained and is evaluated (no positive or negative text, shift 1, token LayerNorm on) and the
    originals' defaults too; NextStep-1's README example uses positive "masterpiece, film grained, best
    quality." with a long negative list, and its editing example negative "Copy original image." with
    shift 3.2."""

    positive_prompt: str = ""  # appended to every caption and instruction after a space
    negative_prompt: str = ""  # the unconditional row of text-to-image
    edit_negative_prompt: str = ""  # the negative rows of editing (one argument in the original, per call)
    shift: float = 1.0  # the flow-matching timesteps shift, text-to-image
    edit_shift: float = 1.0  # ... editing
    use_norm: bool = True  # LayerNorm each sampled token before it is fed back and decoded

    def __post_init__(self) -> None:
        for name in ("shift", "edit_shift"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 0.0 < v <= 100.0):
                raise ValueError(f"{name} must be in (0, 100], got {v}")

    def generation(self, kind: str, guidance_scale: float, image_guidance_scale: float, steps: int,
                   original_rows: bool = False) -> GenerationConfig:
        """The sampler's config for one job kind ("t2i" or "edit")."""
        edit = kind == "edit"
        return GenerationConfig(cfg_scale=guidance_scale, cfg_img_scale=image_guidance_scale or 1.0, steps=steps,
                                shift=self.edit_shift if edit else self.shift, use_norm=self.use_norm,
                                positive_prompt=self.positive_prompt,
                                negative_prompt=self.edit_negative_prompt if edit else self.negative_prompt,
                                original_rows=original_rows)


class NextStepBackend:
    name = "nextstep"

    def __init__(self, model: NextStep, parts: ImageParts, pad_bucket: int = 32,
                 context: ContextEncoder | None = None, sampling: NextStepSampling | None = None) -> None:
        self.model, self.parts, self.pad_bucket = model, parts, pad_bucket
        self.context = context  # the "original" format's in-context encoder
        self.sampling = sampling or NextStepSampling()

    @classmethod
    def load(cls, model_dir: Path, resolution: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
             pad_bucket: int = 32, sampling: NextStepSampling | None = None) -> NextStepBackend:
        parts = load_parts(model_dir, resolution, device, dtype)
        model = load_nextstep(model_dir, dtype=dtype, device=device)
        return cls(model, parts, pad_bucket, prompt_specials(model, parts, model_dir), sampling)

    @property
    def original(self) -> bool:
        return self.model.config.prompt_format == "original"

    @property
    def encode(self) -> Encode:
        return self.context if self.context is not None else self.parts.tokenizer.encode

    def _gen(self, job: ImageJob) -> GenerationConfig:
        return self.sampling.generation(job.kind, job.guidance_scale, job.image_guidance_scale, job.steps,
                                        self.original)

    def padded_length(self, job: ImageJob) -> int:
        m, enc, grid, gen = self.model, self.encode, self.parts.grid, self._gen(job)
        rows = (t2i_rows(m, enc, [job.text], grid, gen) if job.kind == "t2i"
                else edit_rows(m, enc, [job.text], grid, grid, gen))
        return round_up(max(len(r) for r in rows), self.pad_bucket)

    @torch.no_grad()
    def generate(self, jobs: Sequence[ImageJob], hook: PatchHook | None) -> torch.Tensor:
        j0, enc, grid, gen = jobs[0], self.encode, self.parts.grid, self._gen(jobs[0])
        pad_to = max(j.pad_to or self.padded_length(j) for j in jobs)  # one value under the batch key
        texts = [j.text for j in jobs]
        if j0.kind == "t2i":
            tokens = t2i_tokens(self.model, enc, texts, grid, gen, generators(jobs), hook, pad_to)
        else:
            src = self.parts.encode_images(np.stack([j.source for j in jobs]))  # type: ignore[misc]
            tokens = edit_image_tokens(self.model, enc, src, texts, grid, grid, gen, generators(jobs), hook, pad_to)
        return self.parts.decode(tokens)

    @torch.no_grad()
    def next_token(self, text: str, context: torch.Tensor, generator: torch.Generator, steps: int,
                   guidance_scale: float) -> torch.Tensor:
        """Token k [C] after the caption and tokens [k, C] (`ImageBackend.next_token`); cond and uncond
        rows padded to the longer, without the KV cache."""
        m, c, gen = self.model, self.model.config, self.sampling.generation("t2i", guidance_scale, 0.0, steps,
                                                                            self.original)
        rows = [r + [c.image_placeholder_id] * len(context)
                for r in t2i_rows(m, self.encode, [text], self.parts.grid, gen)]
        ids, valid = left_pad(rows, c.pad_id)
        feats = context.repeat(len(rows), 1) if len(context) else None
        dev = m.backbone.embed.weight.device
        h = m(ids.to(dev), None if feats is None else feats.to(dev), mask=causal_mask(valid.to(dev)))[:, -1]
        tok = sample_token(m.image_head, m.condition(h), 1, cfg_scale=gen.cfg_scale, steps=gen.steps,
                           shift=gen.shift, generator=generator, token_dim=c.token_dim)
        return (token_layer_norm(tok) if gen.use_norm else tok)[0]


def prompt_specials(model: NextStep, parts: ImageParts, model_dir: Path) -> ContextEncoder | None:
    """BOS and `<|image_area|>` from the checkpoint's tokenizer, as the original pipelines take them
    (the new pipeline prepends `tokenizer.bos_token`; both build the prefix from the string
    "<|image_area|>"). Returns the in-context encoder for the original format."""
    tok, cfg = parts.tokenizer, model.config
    if not isinstance(tok, TextTokenizer):
        return None
    adopt(cfg, "bos_token_id", special_id(model_dir, tok, "bos_token"), model_dir)
    area = tok.token_id(IMAGE_AREA_TOKEN)
    if area is not None:
        adopt(cfg, "image_area_id", area, model_dir)
    return ContextEncoder(tok) if cfg.prompt_format == "original" else None
