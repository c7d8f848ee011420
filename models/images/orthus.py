"""Orthus behind the image layer: text-to-image and editing (`ImageBackend`), plus understanding.

Prompts are laid out as `models.orthus.prompt` describes for the checkpoint's `prompt_format`; the
BOS and separator ids come from tokenizer_config.json (`bos_token`, `add_bos_token`, `sep_token`) as
the original processor's tokenizer adds them, and with the "original" format text that follows a
special token in the original's prompt string is encoded in that context (`ContextEncoder.after`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from models.images.base import ImageJob, PatchHook, generators, round_up
from models.images.parts import ContextEncoder, ImageParts, adopt, load_parts, special_id
from models.orthus.checkpoint import load_orthus
from models.orthus.config import OrthusConfig
from models.orthus.generate import TokenHook
from models.orthus.head import CFG, make_scheduler
from models.orthus.model import Orthus
from models.orthus.prompt import Prompt, build_prompt, edit_rows, uncond_text
from models.orthus.vision import from_head_space
from models.orthus.vqgan import load_vq_tokenizer
from models.prompting import load_tokenizer_config
from models.tokenizer import TextCodec, TextTokenizer


class OrthusBackend:
    name = "orthus"

    def __init__(self, model: Orthus, parts: ImageParts, pad_bucket: int = 32,
                 context: ContextEncoder | None = None) -> None:
        self.model, self.parts, self.pad_bucket = model, parts, pad_bucket
        self.context = context  # in-context encoding of text after special tokens ("original" format)

    @classmethod
    def load(cls, model_dir: Path, resolution: int = 0, device: str = "cpu", dtype: torch.dtype = torch.float32,
             pad_bucket: int = 32) -> OrthusBackend:
        model = load_orthus(model_dir, dtype=dtype, device=device).eval()
        if (model_dir / "vae").exists():  # a diffusers VAE beside the model (the embedded tiny checkpoints)
            parts = load_parts(model_dir, resolution, device, dtype)
        else:  # a published checkpoint: Chameleon's VQGAN from its own model.vqmodel.* tensors
            vq, native = load_vq_tokenizer(model_dir, model.passthrough, device, dtype)
            parts = ImageParts(vq, TextTokenizer(model_dir), resolution or native)
            parts.grid  # noqa: B018 - raises now if the resolution does not fit the VQGAN
        return cls(model, parts, pad_bucket, prompt_specials(model, parts, model_dir))

    def _uncond(self) -> Prompt:
        """The T2I guidance row (models.orthus.prompt.uncond_text)."""
        return build_prompt(self.model.config, self.parts.tokenizer.encode(uncond_text(self.model.config)))

    # ---- images ----------------------------------------------------------------------------------

    def _rows(self, job: ImageJob) -> list[Prompt]:
        """The job's CFG rows as `generate_image` / `edit_image` build them (any source: only lengths matter)."""
        cfg, ids = self.model.config, self.parts.tokenizer.encode(job.text)
        if job.kind == "t2i":
            return [build_prompt(cfg, ids), self._uncond()]
        return edit_rows(cfg, torch.zeros(self.parts.num_patches, cfg.latent_dim), ids)

    def padded_length(self, job: ImageJob) -> int:
        return round_up(max(len(r.ids) for r in self._rows(job)), self.pad_bucket)

    @torch.no_grad()
    def generate(self, jobs: Sequence[ImageJob], hook: PatchHook | None) -> torch.Tensor:
        cfg, j0, enc, n = self.model.config, jobs[0], self.parts.tokenizer.encode, self.parts.num_patches
        pad_to = max(j.pad_to or self.padded_length(j) for j in jobs)  # one value under the batch key
        if j0.kind == "t2i":
            prompts = [build_prompt(cfg, enc(j.text)) for j in jobs]
            z = self.model.generate_image(prompts, self._uncond(), j0.guidance_scale, j0.steps, generators(jobs),
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
        for p in (build_prompt(cfg, self.parts.tokenizer.encode(text)), self._uncond()):  # cond, uncond
            ids = [*p.ids, cfg.boi_token_id, *[cfg.image_token_id] * len(context)]
            h, _ = m(torch.tensor([ids], device=m.device), [context.to(m.device)] if len(context) else None)
            last.append(h[0, -1])
        x = m.head.sample(torch.stack(last), make_scheduler("ddim"), steps, generator, CFG(guidance_scale))
        return from_head_space(x, cfg.latent_scale)[0]

    # ---- understanding ---------------------------------------------------------------------------

    @torch.no_grad()
    def question_prompts(self, images: np.ndarray, questions: Sequence[str]) -> list[Prompt]:
        """The "<image>question" rows (brief §1.3) of uint8 images (B, res, res, 3) and their questions."""
        cfg = self.model.config
        feats = self.parts.encode_images(images).to(self.model.device)
        return [build_prompt(cfg, z, question_ids(cfg, self.parts.tokenizer, self.context, q))
                for z, q in zip(feats, questions, strict=True)]

    @torch.no_grad()
    def understand(self, prompts: Sequence[Prompt], max_new_tokens: int,
                   on_token: TokenHook | None = None) -> list[list[int]]:
        """Greedy answer ids per prompt, decoded together (`Orthus.understand`; on_token may raise to stop)."""
        return self.model.understand(prompts, max_new_tokens, on_token)


def question_ids(cfg: OrthusConfig, codec: TextCodec, context: ContextEncoder | None, question: str) -> list[int]:
    """The question's ids: in the original ("<image>question" expanded, brief §1.3) it follows EOI in
    one string, so it is encoded after EOI; the tiny models were trained on it encoded alone."""
    if cfg.prompt_format == "original" and context is not None:
        return context.after(cfg.eoi_token_id, question)
    return codec.encode(question)


def prompt_specials(model: Orthus, parts: ImageParts, model_dir: Path) -> ContextEncoder | None:
    """BOS and separator as the checkpoint's tokenizer gives them (the original's processor appends
    `tokenizer.sep_token` and its Llama tokenizer adds BOS unless `add_bos_token` is false). Returns
    the in-context encoder for the original format."""
    tok, cfg = parts.tokenizer, model.config
    if not isinstance(tok, TextTokenizer):
        return None
    adopt(cfg, "bos_token_id", special_id(model_dir, tok, "bos_token"), model_dir)
    if load_tokenizer_config(model_dir).get("add_bos_token") is False:
        cfg.bos_token_id = None
    sep = special_id(model_dir, tok, "sep_token")
    if sep is not None:
        adopt(cfg, "sep_token_id", sep, model_dir)
    return ContextEncoder(tok) if cfg.prompt_format == "original" else None
