"""The image tokenizer: Flux-style f8 / 16-channel AutoencoderKL + per-token LayerNorm + 2×2 patches.

Brief §2.1 ("Image tokenizer", "Patchify"):
- encode: posterior *mean* (deterministic) -> 2×2 patches of the (16, H/8, W/8) latent -> LayerNorm
  over each 64-d patch (no affine, eps 1e-6) -> `(z - shift) * scale` -> tokens (B, H/16 · W/16, 64)
  in raster (row-major) order, each token laid out (c, p, q) like `einsum nchpwq->nhwcpq`;
- decode: `unpatchify(tokens) / scale + shift` -> VAE decoder -> image in [-1, 1]. The LayerNorm is
  not undone: the decoder was trained on normalised latents ("Image -> Latents -> Normalize -> decode").
- constants: the released tokenizer uses scale 1, shift 0, normalisation on, patch 2 (brief, from
  the diffusers conversion's config). Flux's own 0.3611 / 0.1159 belong to the older code path
  that did not normalise; they are kept here only as named constants.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint
from torch import nn

NEXTSTEP_SCALE, NEXTSTEP_SHIFT = 1.0, 0.0
FLUX_SCALE, FLUX_SHIFT = 0.3611, 0.1159
TOKEN_NORM_EPS = 1e-6


def patchify(latent: torch.Tensor, p: int) -> torch.Tensor:
    """(N, C, H, W) -> (N, H/p · W/p, C·p·p); token (i, j) holds latent[:, c, i·p + a, j·p + b] at c·p² + a·p + b."""
    n, c, h, w = latent.shape
    if h % p or w % p:
        raise ValueError(f"latent {h}x{w} not divisible by patch {p}")
    x = latent.reshape(n, c, h // p, p, w // p, p)
    x = torch.einsum("nchpwq->nhwcpq", x)
    return x.reshape(n, (h // p) * (w // p), c * p * p)


def unpatchify(tokens: torch.Tensor, grid: tuple[int, int], p: int) -> torch.Tensor:
    """Exact inverse of `patchify`: (N, gh·gw, C·p·p) -> (N, C, gh·p, gw·p)."""
    n, length, d = tokens.shape
    gh, gw = grid
    if length != gh * gw or d % (p * p):
        raise ValueError(f"{length} tokens of width {d} do not fill a {gh}x{gw} grid of {p}x{p} patches")
    c = d // (p * p)
    x = tokens.reshape(n, gh, gw, c, p, p)
    x = torch.einsum("nhwcpq->nchpwq", x)
    return x.reshape(n, c, gh * p, gw * p)


def token_layer_norm(tokens: torch.Tensor) -> torch.Tensor:
    """Per-token LayerNorm over the last (64-d) axis, no affine: the tokenizer's `encoder_norm`
    and the generation loop's `use_norm` step are this same operation."""
    return F.layer_norm(tokens, tokens.shape[-1:], eps=TOKEN_NORM_EPS)


def image_grid(height: int, width: int, factor: int) -> tuple[int, int]:
    """Tokens per side of an image whose sides are divided by `factor`; raises if one is not a multiple."""
    if height % factor or width % factor:
        raise ValueError(f"image {height}x{width} not divisible by {factor}")
    return height // factor, width // factor


LDM_GROUPS = 32  # the originals' GroupNorm(32, eps 1e-6) in every LDM / taming VAE block


def ldm_blocks(base_channels: int, channel_multiplier: list[int], layers_per_block: int) -> dict[str, Any]:
    """The diffusers block config of an LDM / taming VAE (Flux's and Chameleon's): one level per
    multiplier, no attention inside the levels, silu, GroupNorm(32)."""
    levels = len(channel_multiplier)
    channels = [base_channels * m for m in channel_multiplier]
    if any(c % LDM_GROUPS for c in channels):
        raise ValueError(f"every level's channels must be a multiple of {LDM_GROUPS} (GroupNorm), got {channels}")
    return {"down_block_types": ["DownEncoderBlock2D"] * levels, "up_block_types": ["UpDecoderBlock2D"] * levels,
            "block_out_channels": channels, "layers_per_block": layers_per_block, "act_fn": "silu",
            "norm_num_groups": LDM_GROUPS}


def load_ldm_weights(model: nn.Module, state: dict[str, torch.Tensor], cfg: dict[str, Any], unfit: str, source: str,
                     extra: dict[str, torch.Tensor] | None = None) -> None:
    """Load an LDM / taming-layout state dict (`encoder.down.{i}.block.{j}...`) into the diffusers VAE
    `model` built from `cfg`, names mapped by diffusers' own LDM-VAE converter; `extra`: tensors already
    under diffusers' names. Every tensor must land and every parameter must come from one (`unfit`,
    `source`: what the errors call the mismatch and the tensors)."""
    converted = {**convert_ldm_vae_checkpoint(state, cfg), **(extra or {})}
    missing, unexpected = model.load_state_dict(converted, strict=False)
    if missing or unexpected:
        raise ValueError(f"{unfit}: missing {sorted(missing)[:8]}, unexpected {sorted(unexpected)[:8]}")
    if sum(t.numel() for t in converted.values()) != sum(t.numel() for t in state.values()):
        raise ValueError(f"some {source} tensors were not converted")


def square_grid(num_tokens: int) -> tuple[int, int]:
    side = round(num_tokens ** 0.5)
    if side * side != num_tokens:
        raise ValueError(f"{num_tokens} tokens are not a square grid; pass grid=(h, w)")
    return side, side


def flux_vae_config() -> dict[str, Any]:
    """The real tokenizer's architecture (Flux VAE: ch 128, ch_mult [1,2,4,4], 2 res-blocks, z 16)."""
    return {
        "in_channels": 3, "out_channels": 3, "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4, "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2, "latent_channels": 16, "norm_num_groups": 32, "sample_size": 512,
        "scaling_factor": NEXTSTEP_SCALE, "shift_factor": NEXTSTEP_SHIFT, "use_quant_conv": False,
        "use_post_quant_conv": False, "mid_block_add_attention": True, "force_upcast": False,
    }


def tiny_vae_config(channels: int = 8, sample_size: int = 32) -> dict[str, Any]:
    """Same topology and latent contract (4 levels = f8, 16 latent channels, mid attention), tiny
    widths for tests and CPU training: a 48×48 image -> 16×6×6 latent -> 3×3 = 9 tokens of 64."""
    return {**flux_vae_config(), "block_out_channels": [channels] * 4, "layers_per_block": 1,
            "norm_num_groups": min(4, channels), "sample_size": sample_size}


class ImageTokenizer(nn.Module):
    """AutoencoderKL + the NextStep token contract. `encode(images in [-1,1]) -> tokens`,
    `decode(tokens) -> images in [-1,1]`."""

    def __init__(self, vae: AutoencoderKL, patch_size: int = 2, normalize: bool = True) -> None:
        super().__init__()
        self.vae = vae
        self.patch_size = patch_size
        self.normalize = normalize
        cfg = vae.config
        self.scale = float(cfg.scaling_factor)
        self.shift = float(cfg.shift_factor or 0.0)
        # f = 2 ** (levels - 1): diffusers AutoencoderKL downsamples in every block but the last.
        self.downsample = 2 ** (len(cfg.block_out_channels) - 1)
        if patch_size <= 0:
            raise ValueError(f"patch_size must be positive, got {patch_size}")

    @classmethod
    def from_config(cls, config: dict[str, Any], patch_size: int = 2, normalize: bool = True) -> ImageTokenizer:
        return cls(AutoencoderKL(**config), patch_size, normalize)

    @property
    def token_dim(self) -> int:
        return int(self.vae.config.latent_channels) * self.patch_size ** 2

    @property
    def down_factor(self) -> int:
        return self.downsample * self.patch_size

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return image_grid(height, width, self.down_factor)

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, H, W) in [-1, 1] -> tokens (N, H/16 · W/16, 64)."""
        self.grid(images.shape[-2], images.shape[-1])
        p = next(self.vae.parameters())
        z = self.vae.encode(images.to(p.dtype)).latent_dist.mean  # deterministic posterior
        tokens = patchify(z, self.patch_size)
        if self.normalize:
            tokens = token_layer_norm(tokens)
        # The reference un-patchifies before scaling and the model patchifies again; with one
        # patch size on both sides that pair is the identity, so scale the tokens directly.
        return (tokens - self.shift) * self.scale

    @torch.no_grad()
    def tokens_to_latent(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        grid = grid or square_grid(tokens.shape[1])
        return unpatchify(tokens, grid, self.patch_size) / self.scale + self.shift

    @torch.no_grad()
    def decode(self, tokens: torch.Tensor, grid: tuple[int, int] | None = None) -> torch.Tensor:
        """tokens (N, gh·gw, 64) -> images (N, 3, gh·16, gw·16) in [-1, 1] (not clamped)."""
        p = next(self.vae.parameters())
        return self.vae.decode(self.tokens_to_latent(tokens, grid).to(p.dtype)).sample

    # ---- persistence: a diffusers VAE directory plus the token-contract keys -------------------

    def save_pretrained(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        self.vae.save_pretrained(str(out))
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update(patch_size=self.patch_size, normalize_latents=self.normalize, deterministic=True)
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, model_dir: str | Path, dtype: torch.dtype = torch.float32) -> ImageTokenizer:
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        if cfg.get("deterministic") is False:
            raise ValueError("only the deterministic (posterior mean) tokenizer is supported")
        vae = AutoencoderKL.from_pretrained(str(model_dir), torch_dtype=dtype)
        return cls(vae.eval(), int(cfg.get("patch_size", 2)), bool(cfg.get("normalize_latents", True)))


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] (N, 3, H, W) -> uint8 (N, H, W, 3), the reference's x/2 + 0.5 -> ×255."""
    x = (images.float() / 2 + 0.5).clamp(0, 1)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def from_uint8(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
