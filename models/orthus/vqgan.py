"""Chameleon's VQGAN as Orthus runs it (brief §1.1): continuous latents, the VQ step skipped.

- encode: `encode_wo_quant` = encoder -> quant_conv (1x1); a 512x512 image gives (256, 32, 32),
  permuted to 1024 raster-order tokens of 256 (`processing_orthus.py`);
- decode: post_quant_conv -> decoder (nearest x2 upsampling), tokens viewed back to (256, 32, 32);
- pixels: ChameleonImageProcessor rescales by 0.0078 and normalises with mean 1 / std 1 (x * 0.0078 - 1),
  and `postprocess_pixel_values` undoes it ((x + 1) / 0.0078). The image layer speaks [-1, 1] with
  x / 127.5 - 1 (models.nextstep.vae.from_uint8), so `VQTokenizer` maps between the two exactly.

The checkpoint's `model.vqmodel.*` tensors are taming's VQGAN layout; diffusers' `VQModel` is the same
network, and diffusers' own LDM-VAE converter maps the names (as for NextStep's tokenizer).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from diffusers import VQModel
from torch import nn

from models.nextstep.vae import image_grid, ldm_blocks, load_ldm_weights, patchify, square_grid, unpatchify

PREFIX = "model.vqmodel."
RESCALE = 0.0078  # ChameleonImageProcessor's rescale_factor; image_mean = image_std = 1.0
# transformers' ChameleonVQVAEConfig defaults (a key absent from config.json's vq_config).
VQ_DEFAULTS: dict[str, Any] = {
    "embed_dim": 256, "num_embeddings": 8192, "double_latent": False, "latent_channels": 256, "resolution": 512,
    "in_channels": 3, "base_channels": 128, "channel_multiplier": [1, 1, 2, 2, 4], "num_res_blocks": 2,
    "attn_resolutions": None, "attn_type": "vanilla",
}


def vq_params(model_dir: Path) -> dict[str, Any]:
    """config.json's vq_config over the defaults, refusing what the diffusers network does not run."""
    raw = json.loads((model_dir / "config.json").read_text()).get("vq_config") or {}
    p = {k: raw.get(k, v) for k, v in VQ_DEFAULTS.items()}
    if raw.get("n_embed") is not None and raw.get("num_embeddings") is None:
        p["num_embeddings"] = raw["n_embed"]
    if p["attn_resolutions"]:
        raise ValueError(f"vq_config.attn_resolutions {p['attn_resolutions']}: attention inside the VQGAN's levels "
                         "is not supported (Chameleon's has none)")
    if p["attn_type"] != "vanilla" or p["double_latent"]:
        raise ValueError(f"vq_config attn_type {p['attn_type']!r} / double_latent {p['double_latent']}: only "
                         "vanilla attention and a single latent are supported")
    return p


def diffusers_vq_config(p: dict[str, Any]) -> dict[str, Any]:
    return {
        **ldm_blocks(p["base_channels"], p["channel_multiplier"], p["num_res_blocks"]),
        "in_channels": p["in_channels"], "out_channels": p["in_channels"], "latent_channels": p["latent_channels"],
        "sample_size": p["resolution"], "num_vq_embeddings": p["num_embeddings"], "vq_embed_dim": p["embed_dim"],
        "scaling_factor": 1.0, "norm_type": "group", "mid_block_add_attention": True, "lookup_from_codebook": False,
        "force_upcast": False,
    }


def build_vqmodel(tensors: Mapping[str, torch.Tensor], p: dict[str, Any]) -> VQModel:
    """The diffusers VQModel of a checkpoint's `model.vqmodel.*` tensors; every tensor must fit."""
    sd = {k[len(PREFIX):]: v.float() for k, v in tensors.items() if k.startswith(PREFIX)}
    if not any(k.startswith("decoder.") for k in sd):
        raise ValueError("the checkpoint has no VQGAN decoder (model.vqmodel.decoder.*): Orthus checkpoints carry "
                         "it; a Chameleon one does not, and cannot turn latents into pixels")
    cfg = diffusers_vq_config(p)
    vq = VQModel(**cfg)
    # The codebook is not run (no VQ step): the checkpoint's when it has one, else the one built.
    key = "quantize.embedding.weight"
    code = {key: sd.get(key, vq.quantize.embedding.weight.detach())}
    load_ldm_weights(vq, {**sd, **code}, cfg, "model.vqmodel.* does not fit vq_config", "model.vqmodel.*", extra=code)
    return vq.eval()


class VQTokenizer(nn.Module):
    """The image layer's tokenizer contract (models.nextstep.vae.ImageTokenizer) over Chameleon's VQGAN:
    `encode(images in [-1, 1]) -> tokens (B, h·w, embed_dim)`, `decode(tokens, grid) -> images in [-1, 1]`."""

    def __init__(self, vq: VQModel) -> None:
        super().__init__()
        self.vq = vq

    @property
    def token_dim(self) -> int:
        return int(self.vq.config.vq_embed_dim)

    @property
    def down_factor(self) -> int:
        return 2 ** (len(self.vq.config.block_out_channels) - 1)  # every level but the last halves

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return image_grid(height, width, self.down_factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.grid(images.shape[-2], images.shape[-1])
        p = next(self.vq.parameters())
        x = ((images.float() + 1) * 127.5 * RESCALE - 1).to(p.dtype)  # the processor's pixels
        return patchify(self.vq.encode(x).latents, 1)

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        p = next(self.vq.parameters())
        z = unpatchify(tokens, grid or square_grid(tokens.shape[1]), 1).to(p.dtype)
        out = self.vq.decode(z, force_not_quantize=True).sample
        return (out.float() + 1) / RESCALE / 127.5 - 1  # postprocess_pixel_values, in the layer's [-1, 1]


def load_vq_tokenizer(model_dir: Path, tensors: Mapping[str, torch.Tensor], device: str | torch.device = "cpu",
                      dtype: torch.dtype = torch.float32) -> tuple[VQTokenizer, int]:
    """The tokenizer of an Orthus checkpoint without a vae/ directory, and its native resolution."""
    p = vq_params(model_dir)
    return VQTokenizer(build_vqmodel(tensors, p).to(device, dtype)), int(p["resolution"])
