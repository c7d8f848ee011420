"""Orthus behind the image layer: text-to-image and editing (`ImageBackend`), plus understanding."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.images.base import ImageJob, PatchHook, generators, round_up
from models.images.parts import ImageParts, load_parts
from models.orthus.checkpoint import load_orthus
from models.orthus.generate import TokenHook
from models.orthus.head import CFG, make_scheduler
from models.orthus.model import Orthus
from models.orthus.prompt import Prompt, build_prompt, edit_rows
from models.orthus.vision import from_head_space


class OrthusBackend:
    name = "orthus"

    def __init__(self, model: Orthus, parts: ImageParts, pad_bucket: int = 32) -> None:
        self.model, self.parts, self.pad_bucket = model, parts, pad_bucket

    @classmethod
    def load(cls, model_dir: Path, resolution: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
             pad_bucket: int = 32) -> OrthusBackend:
        parts = load_parts(model_dir, resolution, device, dtype)
        return cls(load_orthus(model_dir, dtype=dtype, device=device).eval(), parts, pad_bucket)

    # ---- images ----------------------------------------------------------------------------------

    def _rows(self, job: ImageJob) -> list[Prompt]:
        """The job's CFG rows as `generate_image` / `edit_image` build them (any source: only lengths matter)."""
        cfg, ids = self.model.config, self.parts.tokenizer.encode(job.text)
        if job.kind == "t2i":
            return [build_prompt(cfg, ids), build_prompt(cfg)]
        return edit_rows(cfg, torch.zeros(self.parts.num_patches, cfg.latent_dim), ids)

    def padded_length(self, job: ImageJob) -> int:
        return round_up(max(len(r.ids) for r in self._rows(job)), self.pad_bucket)

    @torch.no_grad()
    def generate(self, jobs: Sequence[ImageJob], hook: PatchHook | None) -> torch.Tensor:
        cfg, j0, enc, n = self.model.config, jobs[0], self.parts.tokenizer.encode, self.parts.num_patches
        pad_to = max(j.pad_to or self.padded_length(j) for j in jobs)  # one value under the batch key
        if j0.kind == "t2i":
            prompts = [build_prompt(cfg, enc(j.text)) for j in jobs]
            z = self.model.generate_image(prompts, build_prompt(cfg), j0.guidance_scale, j0.steps, generators(jobs),
                                          n, on_patch=hook, pad_to=pad_to)
        else:
            src = self.parts.encode_images(np.stack([j.source for j in jobs])).to(self.model.device)  # type: ignore[misc]
            z = self.model.edit_image(list(src), [enc(j.text) for j in jobs], j0.guidance_scale,
                                      j0.image_guidance_scale, j0.steps, generators(jobs), n, on_patch=hook,
                                      pad_to=pad_to)
        return self.parts.decode(z)

    @torch.no_grad()
    def next_token(self, text: str, context: torch.Tensor, generator: torch.Generator, steps: int,
                   guidance_scale: float) -> torch.Tensor:
        """Patch k [C] after the caption and patches [k, C] (`ImageBackend.next_token`); cond and uncond
        rows run one at a time, unpadded."""
        m, cfg = self.model, self.model.config
        last = []
        for p in (build_prompt(cfg, self.parts.tokenizer.encode(text)), build_prompt(cfg)):  # cond, uncond
            ids = [*p.ids, cfg.boi_token_id, *[cfg.image_token_id] * len(context)]
            h, _ = m(torch.tensor([ids], device=m.device), [context.to(m.device)] if len(context) else None)
            last.append(h[0, -1])
        x = m.head.sample(torch.stack(last), make_scheduler("ddim"), steps, generator, CFG(guidance_scale))
        return from_head_space(x, cfg.latent_scale)[0]

    # ---- understanding ---------------------------------------------------------------------------

    @torch.no_grad()
    def question_prompts(self, images: np.ndarray, questions: Sequence[str]) -> list[Prompt]:
        """The "<image>question" rows (brief §1.3) of uint8 images (B, res, res, 3) and their questions."""
        feats = self.parts.encode_images(images).to(self.model.device)
        enc = self.parts.tokenizer.encode
        return [build_prompt(self.model.config, z, enc(q)) for z, q in zip(feats, questions, strict=True)]

    @torch.no_grad()
    def understand(self, prompts: Sequence[Prompt], max_new_tokens: int,
                   on_token: TokenHook | None = None) -> list[list[int]]:
        """Greedy answer ids per prompt, decoded together (`Orthus.understand`; on_token may raise to stop)."""
        return self.model.understand(prompts, max_new_tokens, on_token)
