"""A checkpoint directory's shared parts: the VAE, the tokenizer and the square resolution."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from models.nextstep.vae import ImageTokenizer, from_uint8, to_uint8
from models.tokenizer import TextCodec, TextTokenizer


@dataclass(slots=True)
class ImageParts:
    vae: ImageTokenizer
    tokenizer: TextCodec
    resolution: int

    @property
    def grid(self) -> tuple[int, int]:
        return self.vae.grid(self.resolution, self.resolution)

    @property
    def num_patches(self) -> int:
        gh, gw = self.grid
        return gh * gw

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

    def decode_partial(self, sofar: torch.Tensor) -> np.ndarray:
        """A preview: the first patches' tokens (B, done, C) -> uint8 (B, res, res, 3), the patches still
        to come at zero, the tokens' mean (flat grey)."""
        tokens = torch.zeros(sofar.shape[0], self.num_patches, sofar.shape[-1])
        tokens[:, :sofar.shape[1]] = sofar
        return self.decode_tokens(tokens)


def native_resolution(model_dir: Path) -> int:
    """The square size a checkpoint was trained at: its VAE's sample_size. The shapes models' tokens each
    cover one cell of their world, so another size would cut shapes across tokens."""
    try:
        return int(json.loads((model_dir / "vae" / "config.json").read_text())["sample_size"])
    except (OSError, KeyError, ValueError) as e:
        raise FileNotFoundError(f"{model_dir / 'vae' / 'config.json'} gives no sample_size ({e}); "
                                "set model.resolution") from e


def load_parts(model_dir: Path, resolution: int, device: str, dtype: torch.dtype) -> ImageParts:
    """The VAE and tokenizer of `model_dir`; resolution 0: the checkpoint's own (native_resolution)."""
    for need in ("tokenizer.json", "vae/config.json"):
        if not (model_dir / need).exists():
            raise FileNotFoundError(f"{model_dir / need} not found: an image checkpoint directory holds the model, "
                                    "tokenizer.json and vae/ (python -m lab.training.images)")
    vae = ImageTokenizer.from_pretrained(model_dir / "vae", dtype=dtype).to(device).eval()
    parts = ImageParts(vae, TextTokenizer(model_dir), resolution or native_resolution(model_dir))
    parts.grid  # noqa: B018 - raises now if the resolution does not fit the VAE
    return parts
