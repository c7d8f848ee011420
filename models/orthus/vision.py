"""Orthus's vision embedding module (the soft replacement for VQ) and the latent in/out transforms.

Brief §1.1: a continuous 256-d VQGAN feature z (encoder -> quant_conv, no quantisation) enters the
backbone as a convex mix of Chameleon's image-token embeddings:
    d_j = |z|^2 + |e_j|^2 - 2 z.e_j  over a learned table `codebook_in` (8192 x 256),
    w   = softmax(-d)  (no temperature),
    emb = w @ embed_tokens.weight[4:8196].
The mixed rows are hard-coded as [offset, offset + codebook_size) and do not go through Chameleon's
img2bpe map; we copy that. The diffusion head works on z * 0.1 and its sample is divided by 0.1
(brief §1.1 "Targets", §1.2 "Output"). Features travel between the VQGAN layout [B, C, H, W] and the
sequence layout [B, H*W, C] in row-major patch order (processing_orthus / decode_image_latents).
"""

from __future__ import annotations

import torch
from torch import nn


class SoftVQEmbedding(nn.Module):
    def __init__(self, codebook_size: int, latent_dim: int, image_token_offset: int) -> None:
        super().__init__()
        self.codebook = nn.Embedding(codebook_size, latent_dim)  # checkpoint: codebook_in
        self.offset = image_token_offset

    def weights(self, z: torch.Tensor) -> torch.Tensor:
        """Mixing weights [..., K] for features z [..., C]."""
        # float32: |z|^2 and |e|^2 are large and nearly cancel in d, and softmax(-d) is then
        # sharp, so bf16 would flip the weights between neighbouring codes.
        zf = z.float()
        e = self.codebook.weight.float()
        d = zf.pow(2).sum(-1, keepdim=True) + e.pow(2).sum(-1) - 2.0 * zf @ e.T
        return torch.softmax(-d, dim=-1)

    def forward(self, z: torch.Tensor, token_table: torch.Tensor) -> torch.Tensor:
        """Backbone input embeddings [..., D] for features z [..., C]; token_table: embed_tokens.weight [V, D]."""
        k = self.codebook.num_embeddings
        rows = token_table[self.offset:self.offset + k]
        return (self.weights(z) @ rows.float()).to(token_table.dtype)


def to_head_space(z: torch.Tensor, scale: float) -> torch.Tensor:
    """VQ feature -> the diffusion head's space (training targets were features x 0.1)."""
    return z * scale


def from_head_space(x: torch.Tensor, scale: float) -> torch.Tensor:
    """Diffusion head sample -> VQ feature (the original returns `x / 0.1`)."""
    return x / scale


def grid_to_patches(features: torch.Tensor) -> torch.Tensor:
    """VQGAN encoder output [B, C, H, W] -> patch sequence [B, H*W, C] (row-major, as the processor does)."""
    b, c, h, w = features.shape
    return features.permute(0, 2, 3, 1).reshape(b, h * w, c)


def patches_to_grid(patches: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Patch sequence [B, H*W, C] -> [B, C, H, W] for post_quant_conv + the VQGAN decoder."""
    b, n, c = patches.shape
    if n != height * width:
        raise ValueError(f"{n} patches do not fill a {height}x{width} grid")
    return patches.view(b, height, width, c).permute(0, 3, 1, 2)
