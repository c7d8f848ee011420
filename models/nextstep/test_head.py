"""(c) samplers and timestep shift, (d) CFG rows batched == separate rows, head geometry."""

from __future__ import annotations

from itertools import pairwise

import pytest
import torch
from torch import nn

from models.nextstep.head import (
    FlowMatchingHead,
    combine_cfg,
    guided_velocity,
    make_timesteps,
    sample_token,
    time_shift,
)


class ZeroVelocity(nn.Module):
    """A head that predicts v = 0 (and exposes the geometry the sampler reads)."""

    def __init__(self) -> None:
        super().__init__()
        self.input_proj = nn.Linear(8, 1)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(x)


def _head(seed: int = 0) -> FlowMatchingHead:
    torch.manual_seed(seed)
    h = FlowMatchingHead(token_dim=8, cond_dim=12, width=16, depth=2)
    with torch.no_grad():
        for p in h.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return h.eval()


def test_time_shift_hand_computed() -> None:
    # t / (s - (s - 1) t):  0.25 / (3 - 2·0.25) = 0.25 / 2.5 = 0.1;  0.5 / (3.2 - 2.2·0.5) = 0.5 / 2.1
    assert time_shift(0.25, 3.0) == pytest.approx(0.1, abs=1e-15)
    assert time_shift(0.5, 3.2) == pytest.approx(0.5 / 2.1, abs=1e-15)
    assert time_shift(0.7, 1.0) == pytest.approx(0.7)


def test_timestep_grids() -> None:
    ts = make_timesteps(4, 3.0)  # NextStep-1.1: shift(linspace(0,1,5)[:-1]) then 1.0
    want = [0.0, 0.25 / 2.5, 0.5 / 2.0, 0.75 / 1.5, 1.0]
    assert ts.tolist() == pytest.approx(want, abs=1e-12)
    old = make_timesteps(3, 1.0, last_step_size=0.04)  # Aug-2025: linspace(0, 0.96, N), final step 0.04
    assert old.tolist() == pytest.approx([0.0, 0.48, 0.96], abs=1e-12)


def test_euler_ode_with_zero_velocity_is_identity() -> None:
    x0 = torch.randn(3, 8)
    out = sample_token(ZeroVelocity(), torch.randn(6, 12), 3, cfg_scale=4.0, steps=7, shift=2.0, noise=x0)
    assert torch.equal(out, x0)
    # …whereas the SDE with v = 0 is not: its score term pulls x towards 0 and it adds noise.
    sde = sample_token(ZeroVelocity(), torch.randn(3, 12), 3, steps=7, sampler="sde", noise=x0,
                       generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(sde, x0)


def test_sde_is_deterministic_given_a_seeded_generator() -> None:
    head, cond = _head(), torch.randn(4, 12)

    def run(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return sample_token(head, cond, 2, cfg_scale=3.0, steps=6, shift=3.2, sampler="sde", generator=g)

    a, b, c = run(7), run(7), run(8)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    old = sample_token(head, cond, 2, cfg_scale=3.0, steps=6, sampler="sde", last_step_size=0.04,
                       generator=torch.Generator().manual_seed(7))
    assert torch.isfinite(old).all() and old.shape == (2, 8)


def test_ode_matches_hand_rolled_euler() -> None:
    head, cond, x = _head(), torch.randn(2, 12), torch.randn(2, 8)
    out = sample_token(head, cond, 2, steps=3, shift=2.0, noise=x)
    ts = [0.0, (1 / 3) / (2 - 1 / 3), (2 / 3) / (2 - 2 / 3), 1.0]
    with torch.no_grad():
        for t, t2 in pairwise(ts):
            x = x + head(x, torch.full((2,), t), cond) * (t2 - t)
    assert torch.allclose(out, x, atol=1e-6)


def test_cfg_formulas() -> None:
    vc, vu = torch.randn(2, 8), torch.randn(2, 8)
    assert torch.allclose(combine_cfg(torch.cat([vc, vu]), 2, 7.5), vu + 7.5 * (vc - vu))
    v_img, v_0 = torch.randn(2, 8), torch.randn(2, 8)
    got = combine_cfg(torch.cat([vc, v_img, v_0]), 3, 7.5, 2.0)
    assert torch.allclose(got, v_0 + 2.0 * (v_img - v_0) + 7.5 * (vc - v_img))
    assert torch.equal(combine_cfg(vc, 1, 7.5), vc)


@pytest.mark.parametrize("rows", [2, 3])
def test_batched_cfg_rows_equal_separate_rows(rows: int) -> None:
    """One head call over [cond×B, uncond×B(, …)] == each row's head call on its own, then CFG."""
    head, b = _head(), 3
    x, cond, t = torch.randn(b, 8), torch.randn(rows * b, 12), 0.37
    batched = guided_velocity(head, x, t, cond, 5.0, 1.5)
    with torch.no_grad():
        per_row = [head(x[i % b : i % b + 1], torch.full((1,), t), cond[i : i + 1]) for i in range(rows * b)]
    v = torch.cat(per_row)
    if rows == 2:
        want = v[b:] + 5.0 * (v[:b] - v[b:])
    else:
        want = v[2 * b:] + 1.5 * (v[b: 2 * b] - v[2 * b:]) + 5.0 * (v[:b] - v[b: 2 * b])
    assert torch.allclose(batched, want, atol=1e-5)


def test_head_parameter_count_matches_the_paper() -> None:
    """input 64, cond 5120, width 1536, 12 blocks: 157.2 M (the brief's arithmetic; paper: 157M).
    Built on the meta device: counting needs no memory."""
    with torch.device("meta"):
        head = FlowMatchingHead(64, 5120, 1536, 12)
    assert sum(p.numel() for p in head.parameters()) == 157_228_096
