"""Prompt rows: token ids plus the continuous features that fill their `<image>` placeholders.

Tokenisation stays outside the model: text arrives as ids. An image in a prompt expands to
BOI + N x <image> + EOI (N = 1024 for 512x512) and every prompt ends with the separator token
(brief §1.1 special tokens, §1.3 understanding prompt "<image>question"). The original's rows, by
`OrthusConfig.prompt_format` "original" (the tiny checkpoints' "tessera" differs only where noted):
    T2I           BOS prompt sep | BOI ...       guidance row: BOS "Generate an image." sep (tessera: BOS sep)
    understanding BOS BOI <image>xN EOI question sep
    editing       see `edit_rows` (no original script: one layout for both formats)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from models.orthus.config import OrthusConfig

# Brief §1.2: inference/t2i_generation.py batches [user_prompt, "Generate an image."], the second
# being the unconditional (CFG) row; each gets the separator.
ORIGINAL_UNCOND_PROMPT = "Generate an image."


def uncond_text(cfg: OrthusConfig) -> str:
    """The text of the T2I guidance row: the original's, or empty for the tiny models (trained so)."""
    return "" if cfg.prompt_format == "tessera" else ORIGINAL_UNCOND_PROMPT


@dataclass(slots=True)
class Prompt:
    ids: list[int]
    latents: torch.Tensor | None = None  # [n_placeholders, latent_dim], in placeholder order

    def __post_init__(self) -> None:
        if not self.ids:
            raise ValueError("a prompt needs at least one token")


Segment = Sequence[int] | torch.Tensor  # text ids, or one image's patch features [N, C]


def build_prompt(cfg: OrthusConfig, *segments: Segment, bos: bool = True, sep: bool = True) -> Prompt:
    """Concatenate text and image segments into one prompt row (BOS first, separator last)."""
    ids: list[int] = [cfg.bos_token_id] if bos and cfg.bos_token_id is not None else []
    feats: list[torch.Tensor] = []
    for seg in segments:
        if isinstance(seg, torch.Tensor):
            if seg.dim() != 2 or seg.shape[1] != cfg.latent_dim:
                raise ValueError(f"image features must be [N, {cfg.latent_dim}], got {tuple(seg.shape)}")
            ids += [cfg.boi_token_id, *[cfg.image_token_id] * seg.shape[0], cfg.eoi_token_id]
            feats.append(seg)
        else:
            ids += [int(t) for t in seg]
    if sep:
        ids.append(cfg.sep_token_id)
    return Prompt(ids, torch.cat(feats) if feats else None)


def edit_rows(cfg: OrthusConfig, image: torch.Tensor, instruction: Sequence[int]) -> list[Prompt]:
    """The three pix2pix CFG rows of one edit request, in the original's order (brief §1.3):
    [instruction + image, image only, empty].

    The instruction comes before the image. The original released no edit script, so the order within
    a row is ours. With it first, every target patch sits a fixed distance after its source patch in
    both image rows (source, EOI, sep, BOI, target), so copying a kept patch is one fixed-offset
    lookup under RoPE; after the image, the offset moved with the instruction's length. The source
    patches also see the instruction, so they can mark what changes in place."""
    return [build_prompt(cfg, instruction, image), build_prompt(cfg, image), build_prompt(cfg)]
