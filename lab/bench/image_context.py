"""What a model draws from: `python -m lab.bench image --context [--problems N]`.

Held-out captions drawn three ways, each image token sampled with the bench's T2I guidance:
- teacher_forced: token k from the clean encoding of the true image's first k tokens;
- no_leak: token k from the encoding of the true image with cells k.. blanked, so that the context
  holds exactly the cells drawn so far and nothing of the cells still to come;
- free_running: ordinary generation, every token from the model's own samples.
The VAE encoder sees past its cell, so a clean token also carries its neighbours' content. A model
that reads the next cell off that leak scores well teacher-forced and collapses without it; one that
draws from the caption scores about the same in all three. The committed Orthus before its context
noise: 0.95 / 0.06 / 0.58 (64 problems).
"""

from __future__ import annotations

import numpy as np
import torch

from lab.bench.image import SIZE, Backend, Images
from lab.worlds import shapes, shapes_score
from models.nextstep.vae import ImageTokenizer, from_uint8, to_uint8

CONTEXTS = ("teacher_forced", "no_leak", "free_running")


def _decode(vae: ImageTokenizer, tokens: torch.Tensor) -> Images:
    p = next(vae.parameters())
    return to_uint8(vae.decode(tokens.to(p.device, p.dtype), (SIZE // 16, SIZE // 16))).cpu().numpy()


def _encode(vae: ImageTokenizer, images: Images) -> torch.Tensor:
    """The contexts in one VAE batch (the serving layer encodes one at a time; here only the probe reads them)."""
    p = next(vae.parameters())
    return vae.encode(from_uint8(torch.from_numpy(images)).to(p.device, p.dtype))


def blank_from(image: np.ndarray, k: int) -> np.ndarray:
    """`image` with grid cells k, k+1, ... (row-major) painted background; cells before k untouched."""
    out = image.copy()
    edges = shapes.cell_edges(image.shape[0])
    for i in range(k, shapes.GRID * shapes.GRID):
        r, c = divmod(i, shapes.GRID)
        out[edges[r]:edges[r + 1], edges[c]:edges[c + 1]] = shapes.BACKGROUND
    return out


@torch.no_grad()
def _cellwise(b: Backend, caption: str, contexts: list[np.ndarray], seed: int) -> np.ndarray:
    """Token k sampled after the first k tokens of contexts[k]'s encoding, k = 0 .. cells-1; decoded."""
    assert b.vae is not None and b.next_token is not None
    gen = torch.Generator().manual_seed(seed)
    feats = _encode(b.vae, np.stack(contexts))  # [cells, cells, C]
    toks = [b.next_token(caption, feats[k, :k], gen) for k in range(len(contexts))]
    return _decode(b.vae, torch.stack(toks)[None])[0]


def context_probe(b: Backend, problems: int, seed: int = 0) -> dict[str, float]:
    """Mean T2I score on `problems` held-out captions in each of CONTEXTS."""
    if b.vae is None or b.next_token is None:
        raise ValueError(f"backend {b.name} has no next_token hook")
    scenes = shapes.scenes("heldout", problems, seed)
    cells = shapes.GRID * shapes.GRID
    scores: dict[str, list[float]] = {c: [] for c in CONTEXTS}
    for i, s in enumerate(scenes):
        caption, full = shapes.caption(s), shapes.render(s, SIZE)
        tf = _cellwise(b, caption, [full] * cells, seed + i)
        nl = _cellwise(b, caption, [blank_from(full, k) for k in range(cells)], seed + i)
        fr = b.t2i([caption], seed + i)[0]
        for name, img in zip(CONTEXTS, (tf, nl, fr), strict=True):
            scores[name].append(shapes_score.score_t2i(s, img))
    return {c: float(np.mean(v)) for c, v in scores.items()}


def format_probe(name: str, result: dict[str, float]) -> str:
    return f"{name}: " + "  ".join(f"{c} {result[c]:.3f}" for c in CONTEXTS)
