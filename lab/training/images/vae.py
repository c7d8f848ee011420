"""Train the tiny shapes AutoencoderKL that both image models see the world through.

NextStep's tokenizer contract (models/nextstep/vae.py): encode = posterior mean -> 2x2 patches ->
per-token LayerNorm -> tokens; decode = unpatchify -> VAE decoder, with the LayerNorm NOT undone.
So the decoder must be trained on normalised latents: the loss decodes
unpatchify(LN(patchify(z))) rather than z. A little Gaussian noise on the normalised tokens makes
the decoder tolerant of the imperfect tokens the generators produce.

Orthus shares these tokens as its continuous patch features (latent_dim 64, 4 per image): models/orthus
leaves the image encoder/decoder outside the model and only asks for [N, latent_dim] features, and
one autoencoder halves the training budget. The KL weight is tiny: the tokens are re-normalised
anyway, the KL only keeps the posterior from collapsing to a point.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lab.training.images.data import IMAGE_SIZE, render_batch
from lab.training.loop import TrainConfig, train
from lab.worlds import shapes
from models.nextstep.vae import ImageTokenizer, patchify, tiny_vae_config, token_layer_norm, unpatchify


@dataclass(slots=True)
class VAERecipe:
    channels: int = 32
    # 1000 steps: held-out reconstruction error 0.48/255 (2000 steps: 0.32/255) and the scorer reads
    # 300/300 held-out reconstructions right either way; 0.3-0.6 s/step on 2 threads: 5-10 min.
    steps: int = 1000
    lr: float = 2e-3
    batch: int = 32
    pool: int = 4000
    kl_weight: float = 1e-6
    token_noise: float = 0.1  # std of the noise added to normalised tokens before decoding
    seed: int = 0

    def __post_init__(self) -> None:
        if self.channels <= 0 or self.channels % 4:
            raise ValueError(f"channels must be a positive multiple of 4 (GroupNorm groups), got {self.channels}")
        if self.steps <= 0 or self.lr <= 0 or self.batch <= 0 or self.pool < self.batch:
            raise ValueError("steps, lr, batch must be positive and pool >= batch")
        if self.kl_weight < 0 or self.token_noise < 0:
            raise ValueError("kl_weight and token_noise must be >= 0")


def new_tokenizer(channels: int, seed: int = 0) -> ImageTokenizer:
    torch.manual_seed(seed)
    return ImageTokenizer.from_config(tiny_vae_config(channels, IMAGE_SIZE))


@dataclass(slots=True)
class PixelBatch:
    images: torch.Tensor  # (B, 3, IMAGE_SIZE, IMAGE_SIZE) in [-1, 1]

    def to(self, device: torch.device | str) -> PixelBatch:
        return PixelBatch(self.images.to(device))


class RenderStream:
    """Endless batches of renders of training scenes."""

    def __init__(self, pool: int, batch: int, seed: int) -> None:
        self.images = render_batch(shapes.scenes("train", pool, seed))
        self.batch = batch
        self.gen = torch.Generator().manual_seed(seed)

    def next(self) -> PixelBatch:
        idx = torch.randint(len(self.images), (self.batch,), generator=self.gen)
        return PixelBatch(self.images[idx])


def vae_loss(tok: ImageTokenizer, batch: PixelBatch, gen: torch.Generator, kl_weight: float = 1e-6,
             token_noise: float = 0.1) -> torch.Tensor:
    x = batch.images
    post = tok.vae.encode(x).latent_dist
    eps = torch.randn(post.mean.shape, generator=gen).to(x.device)
    z = post.mean + post.std * eps
    p = tok.patch_size
    tokens = token_layer_norm(patchify(z, p))
    if token_noise:
        tokens = tokens + token_noise * torch.randn(tokens.shape, generator=gen).to(x.device)
    grid = (z.shape[-2] // p, z.shape[-1] // p)
    recon = tok.vae.decode(unpatchify(tokens, grid, p) / tok.scale + tok.shift).sample
    # L1 keeps flat colours crisp; MSE punishes the rare large errors (a shape's colour flipping).
    rec = F.l1_loss(recon, x) + F.mse_loss(recon, x)
    kl = post.kl().mean() / x[0].numel()
    return rec + kl_weight * kl


def train_vae(r: VAERecipe, device: str = "cpu", log_every: int = 100) -> tuple[ImageTokenizer, list[float]]:
    tok = new_tokenizer(r.channels, r.seed).to(device)
    stream = RenderStream(r.pool, r.batch, r.seed)
    cfg = TrainConfig(steps=r.steps, lr=r.lr, batch_size=r.batch, warmup=min(100, r.steps // 10 + 1),
                      weight_decay=0.0, seed=r.seed, log_every=log_every, device=device)
    t0 = time.time()
    losses = train(tok, stream, cfg,  # type: ignore[arg-type]  # duck-typed stream/batch
                   lambda b, g: vae_loss(tok, b, g, r.kl_weight, r.token_noise), "vae")
    print(f"[vae] {r.steps} steps in {time.time() - t0:.0f}s", flush=True)
    return tok.eval(), losses


@torch.no_grad()
def reconstruction_error(tok: ImageTokenizer, n: int = 64, device: str = "cpu") -> float:
    """Mean absolute pixel error (0-255 scale) on held-out renders through encode -> decode."""
    x = render_batch(shapes.scenes("heldout", n, seed=7)).to(device)
    y = tok.decode(tok.encode(x)).clamp(-1, 1)
    return float((y - x).abs().mean() * 127.5)


def parameter_count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())
