"""(b) KV-cached incremental forwards equal one full forward."""

from __future__ import annotations

import torch

from models.orthus.backbone import causal_mask
from models.orthus.conftest import text_ids, tiny_orthus
from models.orthus.generate import Rows
from models.orthus.model import Orthus
from models.orthus.prompt import Prompt, build_prompt

TOL = 1e-5


def test_incremental_equals_full(model: Orthus) -> None:
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        full, _ = model(ids)
        cache = model.backbone.new_cache(2, 12)
        parts = [model(ids[:, :5], cache=cache)[0]]  # prefill 5, then 3 x 1 token, then a window of 4
        for i in range(5, 8):
            parts.append(model(ids[:, i:i + 1], cache=cache)[0])
        parts.append(model(ids[:, 8:], cache=cache)[0])
    assert cache.length == 12
    assert (torch.cat(parts, dim=1) - full).abs().max().item() < TOL


def test_padded_rows_incremental_equals_full() -> None:
    """The generation loop's state (left padding, per-row positions, image features) against a full forward."""
    model = tiny_orthus(seed=1)
    cfg = model.config
    feats = torch.randn(4, cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    prompts = [build_prompt(cfg, feats, text_ids(3, 1)), build_prompt(cfg, text_ids(2, 2))]
    steps = torch.randn(3, 2, cfg.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        rows = Rows(model, prompts, extra_capacity=3)
        got = [rows.last] + [rows.step(e) for e in steps]
        for r, p in enumerate(prompts):  # reference: row r alone, all at once, no cache, no padding
            ids = torch.tensor([p.ids])
            x = torch.cat([model.embed_prompt(ids, [p.latents]), steps[:, r][None]], dim=1)
            ref = model.backbone(x)[0, len(p.ids) - 1:]
            assert (torch.stack([g[r] for g in got]) - ref).abs().max().item() < TOL


def test_padding_never_reaches_real_rows() -> None:
    """NaN-free even when a pad slot holds garbage: pads attend only to themselves."""
    model = tiny_orthus(seed=2)
    valid = torch.tensor([[False, False, True, True, True]])
    mask = causal_mask(valid, 0, 5)
    assert mask[0, 0].diagonal().all()  # pad queries see themselves
    assert not mask[0, 0, 2:, :2].any()  # real queries never see pads
    ids = torch.tensor([[0, 0, 40, 41, 42]])
    positions = (valid.long().cumsum(1) - 1).clamp(min=0)
    with torch.no_grad():
        h, _ = model(ids, positions=positions, mask=mask)
        ref, _ = model(ids[:, 2:])
    assert torch.isfinite(h).all()
    assert (h[:, 2:] - ref).abs().max().item() < TOL


def test_prompt_layout(model: Orthus) -> None:
    cfg = model.config
    feats = torch.zeros(3, cfg.latent_dim)
    p = build_prompt(cfg, feats, [40, 41])
    assert p.ids == [cfg.bos_token_id, cfg.boi_token_id, 30, 30, 30, cfg.eoi_token_id, 40, 41, cfg.sep_token_id]
    assert p.latents is not None and p.latents.shape == (3, cfg.latent_dim)
    assert build_prompt(cfg, [40], bos=False, sep=False) == Prompt([40])
