"""(d) The diffusion head and its v-prediction sampler; the soft-VQ vision embedding."""

from __future__ import annotations

import pytest
import torch

from models.orthus.conftest import tiny_config
from models.orthus.head import CFG, DiffusionHead, Pix2PixCFG, make_scheduler, timestep_embedding
from models.orthus.vision import SoftVQEmbedding, grid_to_patches, patches_to_grid


@pytest.fixture
def head() -> DiffusionHead:
    torch.manual_seed(0)
    return DiffusionHead(tiny_config()).eval()


def test_ddim_is_deterministic_with_a_seed(head: DiffusionHead) -> None:
    cond = torch.randn(3, 32, generator=torch.Generator().manual_seed(1))
    runs = [head.sample(cond, make_scheduler("ddim"), 20, torch.Generator().manual_seed(s)) for s in (7, 7, 8)]
    assert runs[0].shape == (3, 8) and runs[0].dtype == torch.float32
    assert torch.equal(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


def test_ddpm_is_deterministic_with_a_seed(head: DiffusionHead) -> None:
    cond = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    a = head.sample(cond, make_scheduler("ddpm"), 10, torch.Generator().manual_seed(3))
    b = head.sample(cond, make_scheduler("ddpm"), 10, torch.Generator().manual_seed(3))
    assert a.shape == (2, 8) and torch.equal(a, b)


def test_trailing_timesteps() -> None:
    s = make_scheduler("ddim")
    s.set_timesteps(100)
    assert s.timesteps[0] == 999 and s.timesteps[-1] == 9 and len(s.timesteps) == 100


def test_oracle_velocity_recovers_x0() -> None:
    """With v = sqrt(a) eps - sqrt(1-a) x0 (the v-prediction target) DDIM must land on x0 exactly."""
    x0 = torch.randn(2, 8, generator=torch.Generator().manual_seed(4))
    sched = make_scheduler("ddim")
    alphas = sched.alphas_cumprod

    class Oracle(DiffusionHead):
        def velocity(self, x: torch.Tensor, t: torch.Tensor, c_emb: torch.Tensor) -> torch.Tensor:
            a = alphas[int(t)]
            eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
            return a.sqrt() * eps - (1 - a).sqrt() * x0

    out = Oracle(tiny_config()).sample(torch.zeros(2, 32), sched, 25, torch.Generator().manual_seed(0))
    assert (out - x0).abs().max().item() < 1e-4


def test_rows_are_independent_with_per_request_generators(head: DiffusionHead) -> None:
    cond = torch.randn(2, 32, generator=torch.Generator().manual_seed(1))
    both = head.sample(cond, make_scheduler(), 10, [torch.Generator().manual_seed(s) for s in (1, 2)])
    alone = head.sample(cond[1:], make_scheduler(), 10, [torch.Generator().manual_seed(2)])
    assert (both[1] - alone[0]).abs().max().item() < 1e-5


def test_guidance_combinations() -> None:
    v = torch.randn(3, 2, 8)
    assert torch.allclose(CFG(1.0).combine(v[:2]), v[0])
    assert torch.allclose(CFG(0.0).combine(v[:2]), v[1])
    assert torch.allclose(CFG(3.0).combine(v[:2]), v[1] + 3 * (v[0] - v[1]))
    assert torch.allclose(Pix2PixCFG(1.0, 1.0).combine(v), v[0], atol=1e-6)
    assert torch.allclose(Pix2PixCFG(0.0, 0.0).combine(v), v[2])
    assert torch.allclose(Pix2PixCFG(2.0, 1.5).combine(v), v[2] + 1.5 * (v[1] - v[2]) + 2.0 * (v[0] - v[1]))


def test_timestep_embedding_is_cos_then_sin() -> None:
    e = timestep_embedding(torch.tensor([0, 999]))
    assert e.shape == (2, 256)
    assert torch.equal(e[0, :128], torch.ones(128)) and torch.equal(e[0, 128:], torch.zeros(128))
    assert abs(e[1, 0].item() - torch.cos(torch.tensor(999.0)).item()) < 1e-5  # frequency 1 first


def test_soft_vq_matches_formula() -> None:
    torch.manual_seed(0)
    vis = SoftVQEmbedding(16, 8, image_token_offset=4)
    table = torch.randn(64, 32)
    z = 0.3 * torch.randn(5, 8)
    w = torch.softmax(-torch.cdist(z, vis.codebook.weight).pow(2), dim=-1)
    assert torch.allclose(vis.weights(z), w, atol=1e-5)
    assert torch.allclose(vis(z, table), w @ table[4:20], atol=1e-5)
    # A feature sitting on a code far from the others embeds as that code's token row.
    with torch.no_grad():
        vis.codebook.weight.mul_(10)
    assert torch.allclose(vis(vis.codebook.weight[3:4], table), table[7:8], atol=1e-5)


def test_grid_round_trip() -> None:
    g = torch.randn(2, 8, 3, 4)
    p = grid_to_patches(g)
    assert p.shape == (2, 12, 8) and torch.equal(p[0, 5], g[0, :, 1, 1])  # row-major patch order
    assert torch.equal(patches_to_grid(p, 3, 4), g)
