"""Orthus's diffusion MLP head (SimpleMLPAdaLN) and its v-prediction sampler (brief §1.1, §1.2, §4).

Network: x (256) -> input_proj -> 3 AdaLN residual blocks -> final AdaLN layer -> v (256), conditioned
on y = time_embed(t) + cond_embed(z), with z the backbone's final-norm hidden state at the position
before the patch and t the integer DDPM timestep (0..999). Module names follow the MAR-style layout
the brief's names suggest (`input_proj`, `time_embed`, `cond_embed`, `adaLN_modulation`, final layer);
`res_blocks`, `in_ln`, `mlp`, `final_layer.norm_final/linear` are our inference, see checkpoint.py.

Sampling: x ~ N(0, I) per request, shared by all of that request's CFG rows (brief §4.2); each step
runs the head once on all rows (cond/uncond[/empty] stacked group-major), combines the velocities
and takes one scheduler step. Trailing spacing with 100 steps gives t = 999, 989, ..., 9.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from diffusers import DDIMScheduler, DDPMScheduler
from torch import nn

from models.orthus.config import OrthusConfig

FREQ_DIM = 256  # sinusoidal timestep-embedding width (cos || sin, 128 frequencies each)

# Training DDPM schedule (brief §1.1) shared by both samplers: zero-terminal-SNR scaled-linear betas.
_SCHEDULE = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 rescale_betas_zero_snr=True, prediction_type="v_prediction", timestep_spacing="trailing")


def make_scheduler(kind: str = "ddim") -> DDIMScheduler | DDPMScheduler:
    """The inference sampler of brief §1.2 (DDIM, eta 0) or the ancestral DDPM sampler."""
    if kind == "ddim":
        return DDIMScheduler(**_SCHEDULE, set_alpha_to_one=True, steps_offset=1, clip_sample=False)
    if kind == "ddpm":
        return DDPMScheduler(**_SCHEDULE, clip_sample=False)
    raise ValueError(f"scheduler kind must be ddim or ddpm, got {kind!r}")


def timestep_embedding(t: torch.Tensor, dim: int = FREQ_DIM, max_period: float = 10000.0) -> torch.Tensor:
    """GLIDE sinusoidal embedding [N, dim] = cos(t f) || sin(t f), f_i = max_period^(-i / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class Guidance(Protocol):
    rows: int  # CFG rows per request

    def combine(self, v: torch.Tensor) -> torch.Tensor:
        """[rows, B, C] velocities, row 0 = fully conditional -> guided [B, C]."""
        ...


@dataclass(frozen=True, slots=True)
class CFG:
    """Two-row text CFG (T2I): rows [cond, uncond]; v = v_u + s (v_c - v_u)."""

    scale: float
    rows: int = 2

    def combine(self, v: torch.Tensor) -> torch.Tensor:
        return v[1] + self.scale * (v[0] - v[1])


@dataclass(frozen=True, slots=True)
class Pix2PixCFG:
    """Three-row editing CFG: rows [image+text, image, empty];
    v = v_empty + s_img (v_img - v_empty) + s_txt (v_full - v_img)  (brief §1.3)."""

    text_scale: float
    image_scale: float
    rows: int = 3

    def combine(self, v: torch.Tensor) -> torch.Tensor:
        return v[2] + self.image_scale * (v[1] - v[2]) + self.text_scale * (v[0] - v[1])


Generators = torch.Generator | list[torch.Generator] | None


def initial_noise(batch: int, channels: int, generator: Generators, device: torch.device) -> torch.Tensor:
    """x_T [batch, channels] float32; a list gives each request its own stream (batch-independent)."""
    if isinstance(generator, list):
        if len(generator) != batch:
            raise ValueError(f"{len(generator)} generators for {batch} requests")
        rows = [torch.randn(channels, generator=g, device=g.device, dtype=torch.float32) for g in generator]
        return torch.stack(rows).to(device)
    gdev = generator.device if generator is not None else device
    return torch.randn(batch, channels, generator=generator, device=gdev, dtype=torch.float32).to(device)


class DiffusionHead(nn.Module):
    def __init__(self, cfg: OrthusConfig) -> None:
        super().__init__()
        w, c = cfg.head_width, cfg.latent_dim
        self.channels = c
        self.input_proj = nn.Linear(c, w)
        self.time_embed = TimestepEmbedder(w)
        self.cond_embed = nn.Linear(cfg.hidden_size, w)
        self.res_blocks = nn.ModuleList(ResBlock(w) for _ in range(cfg.head_num_res_blocks))
        self.final_layer = FinalLayer(w, c)

    def _run(self, x: torch.Tensor, t_emb: torch.Tensor, c_emb: torch.Tensor) -> torch.Tensor:
        y = t_emb + c_emb
        h = self.input_proj(x)
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Velocity [N, C] for noisy x [N, C] (head space), integer timesteps t [N] and hidden states cond [N, D]."""
        dtype = self.input_proj.weight.dtype
        return self._run(x.to(dtype), self.time_embed(t), self.cond_embed(cond.to(dtype)))

    def velocity(self, x: torch.Tensor, t: torch.Tensor, c_emb: torch.Tensor) -> torch.Tensor:
        """One sampler evaluation: x [N, C], a scalar timestep t shared by all rows, embedded conditions [N, W]."""
        t_emb = self.time_embed(t.reshape(1).to(x.device))  # one t for every row: embed once, broadcast
        return self._run(x, t_emb, c_emb)

    @torch.no_grad()
    def sample(self, cond: torch.Tensor, scheduler: DDIMScheduler | DDPMScheduler, steps: int,
               generator: Generators = None, guidance: Guidance | None = None) -> torch.Tensor:
        """One head-space sample [B, C] per request.

        cond: [rows * B, D] hidden states, group-major (all requests' row-0 states, then row 1, ...);
        rows = guidance.rows (1 without guidance). Returns x_0 in head space (divide by latent_scale).
        """
        groups = guidance.rows if guidance is not None else 1
        if cond.shape[0] % groups:
            raise ValueError(f"{cond.shape[0]} condition rows do not split into {groups} CFG groups")
        b = cond.shape[0] // groups
        x = initial_noise(b, self.channels, generator, cond.device)
        dtype = self.input_proj.weight.dtype
        c_emb = self.cond_embed(cond.to(dtype))  # the condition is fixed over the K steps: embed it once
        scheduler.set_timesteps(steps, device=cond.device)
        for t in scheduler.timesteps:
            v = self.velocity(x.to(dtype).repeat(groups, 1), t, c_emb).float()
            v = guidance.combine(v.view(groups, b, -1)) if guidance is not None else v
            x = scheduler.step(v, t, x, generator=generator).prev_sample
        return x
