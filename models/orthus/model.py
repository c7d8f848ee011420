"""Orthus: Chameleon backbone + LM head + soft-VQ vision embedding + diffusion MLP head (brief §1).

Public entry points (all take token ids; tokenisation and the VQGAN encoder/decoder live outside):
- `generate_image`: text-to-image with 2-row CFG (cond and uncond rows in one batched forward);
- `edit_image`: pix2pix-style editing with 3-row CFG [image+text, image, empty] and two scales;
- `understand`: image(s) + question -> greedy text tokens through the LM head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from models.kv_cache import KVCache
from models.orthus.backbone import ChameleonBackbone
from models.orthus.config import OrthusConfig
from models.orthus.generate import PatchHook, TokenHook, image_loop, text_loop
from models.orthus.head import CFG, DiffusionHead, Generators, Pix2PixCFG
from models.orthus.prompt import Prompt, build_prompt, edit_rows
from models.orthus.vision import SoftVQEmbedding


class Orthus(nn.Module):
    def __init__(self, cfg: OrthusConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = ChameleonBackbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embed.weight
        self.vision = SoftVQEmbedding(cfg.codebook_size, cfg.latent_dim, cfg.image_token_offset)
        self.head = DiffusionHead(cfg)
        # Checkpoint tensors we carry but do not run (the VQGAN: model.vqmodel.*), written back on save.
        self.passthrough: dict[str, torch.Tensor] = {}
        # Checkpoint-name prefix of the diffusion head; the loader records the one it found.
        self.head_prefix: str | None = None

    @property
    def device(self) -> torch.device:
        return self.backbone.embed.weight.device

    # ---- embedding and a plain forward ---------------------------------------------------------

    def embed_prompt(self, ids: torch.Tensor, latents: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        """Token embeddings [B, T, D] with `<image>` positions replaced by soft-VQ embeddings of `latents`.

        latents: per row, [n_placeholders_in_row, C] features (None for rows without images).
        """
        x = self.backbone.embed(ids)
        where = ids == self.config.image_token_id
        feats = [z for z in (latents or []) if z is not None]
        if not feats:
            if where.any():
                raise ValueError("prompt has <image> placeholders but no image features")
            return x
        z = torch.cat(feats).to(self.device)
        if int(where.sum()) != z.shape[0]:
            raise ValueError(f"{int(where.sum())} <image> placeholders but {z.shape[0]} image features")
        # Row-major order of `where` matches the per-row concatenation above.
        x = x.clone()
        x[where] = self.vision(z, self.backbone.embed.weight)
        return x

    def forward(self, ids: torch.Tensor, latents: Sequence[torch.Tensor | None] | None = None,
                positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(final-norm hidden states [B, T, D], LM logits [B, T, V]) for a window of ids [B, T]."""
        h = self.backbone(self.embed_prompt(ids, latents), positions, mask, cache)
        return h, self.lm_head(h)

    # ---- generation ------------------------------------------------------------------------------

    def generate_image(self, prompts: Sequence[Prompt], uncond: Prompt | None = None, guidance_scale: float = 5.0,
                       steps: int = 100, generator: Generators = None, num_patches: int | None = None,
                       scheduler: DDIMScheduler | DDPMScheduler | None = None,
                       on_patch: PatchHook | None = None, pad_to: int | None = None) -> torch.Tensor:
        """Latents [B, N, latent_dim] (VQ feature space) for B text prompts.

        uncond: the unconditional prompt (the original uses "Generate an image." + sep); None runs
        without CFG. The defaults (scale 5, 100 DDIM steps) are the T2I script's (brief §1.2).
        pad_to: the prompts' padded length (`image_loop`); default: the longest prompt.
        """
        if uncond is None:
            return image_loop(self, list(prompts), None, steps, generator, num_patches, scheduler, on_patch, pad_to)
        rows = [*prompts, *[uncond] * len(prompts)]  # group-major: all cond rows, then all uncond rows
        return image_loop(self, rows, CFG(guidance_scale), steps, generator, num_patches, scheduler, on_patch,
                          pad_to)

    def edit_image(self, images: Sequence[torch.Tensor], instructions: Sequence[Sequence[int]],
                   text_scale: float = 1.0, image_scale: float = 1.0, steps: int = 100,
                   generator: Generators = None, num_patches: int | None = None,
                   scheduler: DDIMScheduler | DDPMScheduler | None = None,
                   on_patch: PatchHook | None = None, pad_to: int | None = None) -> torch.Tensor:
        """Edited-image latents [B, N, C] for B (source latents [N_src, C], instruction ids) pairs.

        The scales default to 1.0 like the original's `cfg_text` / `cfg_image` (brief §1.3), which
        reduces to the fully conditional row; pass larger values to apply guidance. pad_to: as in
        `generate_image`, for the rows `edit_rows` builds.
        """
        if len(images) != len(instructions):
            raise ValueError(f"{len(images)} images for {len(instructions)} instructions")
        per_request = [edit_rows(self.config, img, ins) for img, ins in zip(images, instructions, strict=True)]
        rows = [req[g] for g in range(3) for req in per_request]  # group-major
        guidance = Pix2PixCFG(text_scale, image_scale)
        return image_loop(self, rows, guidance, steps, generator, num_patches, scheduler, on_patch, pad_to)

    def understand(self, prompts: Sequence[Prompt], max_new_tokens: int = 512,
                   on_token: TokenHook | None = None) -> list[list[int]]:
        """Greedy answer ids per prompt (build them with `build_prompt(cfg, image_latents, question_ids)`)."""
        return text_loop(self, prompts, max_new_tokens, on_token)

    def understand_image(self, image: torch.Tensor, question: Sequence[int], max_new_tokens: int = 512) -> list[int]:
        """Convenience: one image [N, C] + question ids, the "<image>question" prompt of brief §1.3."""
        return self.understand([build_prompt(self.config, image, question)], max_new_tokens)[0]
