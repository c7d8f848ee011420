"""Projectors between the 64-d image-token space and the backbone's hidden size (brief §2.1).

- `image_in_projector`  Linear(64 -> hidden): embeds image tokens, both the VAE tokens written into
  the placeholder slots of a prompt and every generated token fed back during decoding;
- `image_out_projector` Linear(hidden -> hidden): maps the backbone's last hidden state (after the
  final RMSNorm) to the condition of the flow-matching head.
Both are plain `nn.Linear` subclasses (with bias), so their state-dict names are exactly the
checkpoint's `image_in_projector.weight/.bias` and `image_out_projector.weight/.bias` once `NextStep`
holds them under those attribute names.
"""

from __future__ import annotations

import torch
from torch import nn


class ImageInProjector(nn.Linear):
    def __init__(self, token_dim: int, hidden_size: int) -> None:
        super().__init__(token_dim, hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(…, 64) image tokens (any float dtype) -> (…, hidden) input embeddings."""
        return super().forward(tokens.to(self.weight.dtype))


class ImageOutProjector(nn.Linear):
    def __init__(self, hidden_size: int) -> None:
        super().__init__(hidden_size, hidden_size)
