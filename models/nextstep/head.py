"""The flow-matching head and its samplers (brief §2.1 "Flow-matching head", §2.2 "FM sampler",
"Guidance"; the AdaLN-MLP layout is the Orthus `SimpleMLPAdaLN` of §1.1).

Conventions: t ∈ [0, 1], t = 0 is noise and t = 1 is data; x_t = t·x + (1 − t)·ε and the head
predicts the velocity v = x − ε. t enters the sinusoidal embedding as the raw float (no ×1000).

CFG rows are stacked in blocks of B along the batch: K = 1 (no guidance), K = 2 (text CFG:
[cond, uncond]) or K = 3 (editing: [image + text, image + negative, negative]). The head runs once
on all K·B rows per step; only the B conditional trajectories exist (the same x is fed to every
row) and only they draw noise.
"""

from __future__ import annotations

import math
from itertools import pairwise
from typing import Literal

import torch
from torch import nn

Sampler = Literal["ode", "sde"]


# ---- the head -----------------------------------------------------------------------------------


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """GLIDE sinusoidal embedding, [cos ‖ sin] over dim/2 log-spaced frequencies; t: (N,) floats."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, freq_dim: int = 256) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


class ResBlock(nn.Module):
    """LN (affine, eps 1e-6) -> modulate(shift, scale) -> Linear-SiLU-Linear -> x + gate·h."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))  # mlp_ratio 1
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    """LN without affine -> modulate(shift, scale) -> Linear(width -> out)."""

    def __init__(self, width: int, out_dim: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_dim)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """x (N, 64), t (N,), c (N, hidden) -> v (N, 64). NextStep: width 1536, 12 blocks, ≈157.2 M params."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = nn.Linear(cond_dim, width)
        self.input_proj = nn.Linear(token_dim, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, token_dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        y = self.time_embed(t) + self.cond_embed(c)
        h = self.input_proj(x.to(self.input_proj.weight.dtype))
        for block in self.res_blocks:
            h = block(h, y)
        return self.final_layer(h, y)


class FlowMatchingHead(nn.Module):
    """Wrapper whose `net` holds the MLP, so checkpoint names read `image_head.net.*` (see checkpoint.py)."""

    def __init__(self, token_dim: int, cond_dim: int, width: int, depth: int) -> None:
        super().__init__()
        self.net = SimpleMLPAdaLN(token_dim, cond_dim, width, depth)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.net(x, t, c)


# ---- time grid ----------------------------------------------------------------------------------


def time_shift(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """t' = t / (s − (s − 1)·t): s > 1 spends more of the grid near noise (t = 0)."""
    return t / (shift - (shift - 1) * t)


def make_timesteps(steps: int, shift: float = 1.0, last_step_size: float = 0.0) -> torch.Tensor:
    """The integration grid (float64, for exact, device-independent values).

    last_step_size = 0 (NextStep-1.1): shift(linspace(0, 1, steps + 1)[:-1]) then 1.0 — `steps`
    intervals ending exactly at data. last_step_size > 0 (Aug-2025 code, 0.04): shift(linspace(0,
    1 − last, steps)) — `steps − 1` intervals; the sampler then adds one deterministic Euler step of
    size `last_step_size` from the final grid point. Either way the head runs `steps` times.
    """
    if steps <= 0 or shift <= 0:
        raise ValueError(f"need steps > 0 and shift > 0, got {steps}, {shift}")
    if last_step_size == 0.0:
        ts = time_shift(torch.linspace(0, 1, steps + 1, dtype=torch.float64)[:-1], shift)
        return torch.cat([ts, torch.ones(1, dtype=torch.float64)])
    if not 0.0 < last_step_size < 1.0:
        raise ValueError(f"last_step_size must be in [0, 1), got {last_step_size}")
    return time_shift(torch.linspace(0, 1 - last_step_size, steps, dtype=torch.float64), shift)


# ---- guidance -----------------------------------------------------------------------------------


def combine_cfg(v: torch.Tensor, rows: int, cfg_scale: float, cfg_img_scale: float = 1.0) -> torch.Tensor:
    """(rows·B, D) velocities -> (B, D).

    rows 1: v_c. rows 2 ([cond, uncond]): v = v_u + w·(v_c − v_u).
    rows 3 ([image+text, image+negative, negative]): v = v_∅ + w_img·(v_img − v_∅) + w·(v_c − v_img).
    """
    if rows == 1:
        return v
    if rows == 2:
        v_c, v_u = v.chunk(2)
        return v_u + cfg_scale * (v_c - v_u)
    if rows == 3:
        v_c, v_img, v_0 = v.chunk(3)
        return v_0 + cfg_img_scale * (v_img - v_0) + cfg_scale * (v_c - v_img)
    raise ValueError(f"CFG needs 1, 2 or 3 row groups, got {rows}")


def guided_velocity(head: nn.Module, x: torch.Tensor, t: float, cond: torch.Tensor, cfg_scale: float,
                    cfg_img_scale: float = 1.0) -> torch.Tensor:
    """One head call over every CFG row: x (B, D) is shared by the B·rows conditions (rows·B, H)."""
    b = x.shape[0]
    if cond.shape[0] % b:
        raise ValueError(f"{cond.shape[0]} condition rows are not a multiple of batch {b}")
    rows = cond.shape[0] // b
    xs = x.repeat(rows, 1)
    ts = torch.full((xs.shape[0],), t, dtype=torch.float32, device=x.device)
    v = head(xs.to(cond.dtype), ts, cond).float()
    return combine_cfg(v, rows, cfg_scale, cfg_img_scale)


# ---- samplers -----------------------------------------------------------------------------------


Generators = torch.Generator | list[torch.Generator] | None


def _randn(shape: tuple[int, ...], device: torch.device, generator: Generators) -> torch.Tensor:
    if isinstance(generator, list):
        # One generator per row (request): a request's noise then does not depend on its batch mates.
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for {shape[0]} rows")
        return torch.stack([_randn(shape[1:], device, g) for g in generator])
    # Draw on the generator's own device so a CPU generator gives the same numbers for any model device.
    gdev = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=gdev, dtype=torch.float32).to(device)


def sample_token(head: nn.Module, cond: torch.Tensor, batch: int, *, cfg_scale: float = 1.0,
                 cfg_img_scale: float = 1.0, steps: int = 50, shift: float = 1.0, sampler: Sampler = "ode",
                 last_step_size: float = 0.0, generator: Generators = None,
                 noise: torch.Tensor | None = None, token_dim: int | None = None) -> torch.Tensor:
    """Integrate noise (t = 0) to a token (t = 1) for `batch` trajectories conditioned on `cond`.

    ode: Euler, x ← x + v·dt (equal to the 1.1 pipeline's x0·(1 − t') + x1·t' update).
    sde: Euler–Maruyama of the SiT SDE with diffusion (1 − t): score = (t·v − x)/(1 − t),
         drift = v + (1 − t)·score, x ← x + drift·dt + √(2(1 − t))·√dt·ε.
    The state is kept in float32 (64 numbers per row: free) whatever the head's dtype.
    """
    if sampler not in ("ode", "sde"):
        raise ValueError(f"sampler must be 'ode' or 'sde', got {sampler!r}")
    d = token_dim if token_dim is not None else _token_dim(head)
    x = _randn((batch, d), cond.device, generator) if noise is None else noise.float().to(cond.device)
    ts = make_timesteps(steps, shift, last_step_size).tolist()
    for t, t_next in pairwise(ts):
        dt = t_next - t
        v = guided_velocity(head, x, t, cond, cfg_scale, cfg_img_scale)
        if sampler == "ode":
            x = x + v * dt
        else:
            score = (t * v - x) / (1 - t)
            drift = v + (1 - t) * score
            eps = _randn(tuple(x.shape), x.device, generator)
            x = x + drift * dt + math.sqrt(2 * (1 - t)) * math.sqrt(dt) * eps
    if last_step_size > 0:
        x = x + guided_velocity(head, x, ts[-1], cond, cfg_scale, cfg_img_scale) * last_step_size
    return x


def _token_dim(head: nn.Module) -> int:
    net = getattr(head, "net", head)
    return int(net.input_proj.in_features)
