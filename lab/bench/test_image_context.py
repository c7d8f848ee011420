"""The context probe's inputs: blanked renders and the contexts each image token is drawn from."""

from __future__ import annotations

import numpy as np
import torch

from lab.bench.image import SIZE, Backend
from lab.bench.image_context import _cellwise, _encode, blank_from
from lab.training.images import vae as tv
from lab.worlds import shapes

CELLS = shapes.GRID * shapes.GRID


def test_blank_from_keeps_exactly_the_cells_before_k() -> None:
    for s in shapes.scenes("heldout", 20, 0):
        full = shapes.render(s, SIZE)
        assert (blank_from(full, 0) == np.array(shapes.BACKGROUND, np.uint8)).all()
        assert (blank_from(full, CELLS) == full).all()
        for k in range(1, CELLS):
            kept = tuple(sh for sh in s.shapes if sh.row * shapes.GRID + sh.col < k)
            if kept:  # a scene needs at least one shape; an empty one is the all-background case above
                assert (blank_from(full, k) == shapes.render(shapes.Scene(kept), SIZE)).all(), (s, k)


def test_each_token_is_drawn_from_its_own_context() -> None:
    vae = tv.new_tokenizer(8, seed=0).eval()
    seen: list[torch.Tensor] = []

    def next_token(caption: str, context: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        assert caption == "a red circle"
        seen.append(context.clone())
        return torch.zeros(vae.token_dim)

    b = Backend("oracle", lambda c, s: np.zeros(0), lambda i, t, s: np.zeros(0), None, vae, next_token)
    full = shapes.render(shapes.scenes("heldout", 1, 3)[0], SIZE)
    contexts = [blank_from(full, k) for k in range(CELLS)]
    img = _cellwise(b, "a red circle", contexts, seed=0)
    assert img.shape == (SIZE, SIZE, 3)
    assert [len(c) for c in seen] == list(range(CELLS))
    with torch.no_grad():
        for k, ctx in enumerate(seen):
            # allclose: the probe encodes the nine contexts as one batch, which rounds a little
            # differently (the LayerNorm of near-blank tokens magnifies that to ~3e-4)
            assert torch.allclose(ctx, _encode(vae, contexts[k][None])[0, :k], atol=1e-3)
