"""A deterministic GenEval-style scorer for the shapes world, in plain numpy.

`detect` finds the shapes in an image: pixels at least half covered by a palette colour (`coverage`)
are foreground; 8-connected components of them are objects (tiny ones are noise); an object's colour
is the nearest palette colour of its most covered half (a blurred shape's rim is mixed with the
background), its kind comes from two features of its mask, and its cell from its centroid. The
features separate the three kinds by a wide margin on ground truth:

    kind       fill of bounding box   share of pixels in the lower half
    square     1.0                    0.5
    circle     ~0.8                   0.5
    triangle   ~0.6                   ~0.7   (apex up)

`t2i_checks` compares detections with the scene like GenEval (count, kinds, colour attribution, exact
cells, pairwise left/above relations) and `score_t2i` is all-or-nothing over those checks.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from itertools import permutations

import numpy as np

from lab.worlds.shapes import (
    BACKGROUND,
    GRID,
    PALETTE,
    Edit,
    Question,
    Relation,
    Scene,
    answer_matches,
    shape_extent,
)

MIN_COVERAGE = 0.5  # a pixel belongs to a shape when the shape covers at least half of it
COLOUR_THRESHOLD = 90.0  # farther than this from every palette colour: no colour (a miss)
_NAMES = tuple(PALETTE)
_RGB = np.array([PALETTE[c] for c in _NAMES], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class Detected:
    kind: str
    colour: str | None
    row: int
    col: int
    cy: float  # centroid, in pixels from the top-left corner
    cx: float
    area: int


def label_components(mask: np.ndarray) -> np.ndarray:
    """8-connected component labels of a boolean mask (-1 off the mask), without scipy.

    Every pixel starts labelled with its own flat index and repeatedly takes the smallest label in its
    3x3 neighbourhood; pointer jumping (a label is itself a pixel of the component) keeps the number of
    rounds near log(diameter) rather than the diameter.
    """
    h, w = mask.shape
    big = h * w
    lab = np.where(mask, np.arange(big).reshape(h, w), big)
    while True:
        p = np.pad(lab, 1, constant_values=big)
        new = lab.copy()
        for dy in range(3):
            for dx in range(3):
                np.minimum(new, p[dy : dy + h, dx : dx + w], out=new)
        new = np.where(mask, new, big)
        flat = new.ravel()
        on = flat < big
        flat[on] = flat[flat[on]]
        if np.array_equal(new, lab):
            return np.where(mask, lab, -1)
        lab = new


def _classify_kind(ys: np.ndarray, xs: np.ndarray) -> str:
    h, w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    fill = len(ys) / (h * w)
    mid = (ys.min() + ys.max()) / 2
    lower = (np.count_nonzero(ys > mid) + 0.5 * np.count_nonzero(ys == mid)) / len(ys)
    if lower >= 0.6 or fill < 0.7:
        return "triangle"
    return "square" if fill >= 0.9 else "circle"


def _cell_index(v: float, length: int) -> int:
    return min(GRID - 1, max(0, int(v * GRID / length)))


def coverage(image: np.ndarray) -> np.ndarray:
    """Per pixel, the fraction of it a palette-coloured shape covers (0 on background, 1 inside a shape).

    A pixel where a shape edge meets the background is a blend bg + a * (colour - bg); projecting onto
    each palette direction and keeping the best fit recovers `a` whatever the colour. A fixed cut on the
    distance from the background would not: a dark shape blurred by one pixel stays far from white, grows
    a rim and merges with its neighbour, while a light one shrinks.
    """
    diff = image.astype(np.float32) - np.array(BACKGROUND, dtype=np.float32)
    dirs = _RGB - np.array(BACKGROUND, dtype=np.float32)
    a = np.clip(diff @ dirs.T / (dirs * dirs).sum(axis=1), 0.0, 1.0)  # HxWxK
    resid = np.linalg.norm(diff[..., None, :] - a[..., None] * dirs, axis=-1)
    return np.take_along_axis(a, resid.argmin(axis=-1)[..., None], axis=-1)[..., 0]


def detect(
    image: np.ndarray,
    min_coverage: float = MIN_COVERAGE,
    colour_threshold: float = COLOUR_THRESHOLD,
    min_area: int | None = None,
) -> list[Detected]:
    """The shapes in an HxWx3 uint8 image, in row-major order of their centroids."""
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 image, got shape {image.shape}")
    h, w = image.shape[:2]
    cov = coverage(image)
    labels = label_components(cov >= min_coverage)
    if min_area is None:
        # A fifth of a ground-truth square: drops noise specks, keeps small or eroded shapes.
        min_area = max(4, shape_extent(min(h, w)) ** 2 // 5)
    found: list[Detected] = []
    for lab in np.unique(labels[labels >= 0]):
        ys, xs = np.nonzero(labels == lab)
        if len(ys) < min_area:
            continue
        c = cov[ys, xs]
        core = c >= np.median(c)  # the rim is a blend with the background; judge colour by the inside
        rgb = image[ys[core], xs[core]].astype(np.float32).mean(axis=0)
        gaps = np.linalg.norm(_RGB - rgb, axis=1)
        colour = _NAMES[int(gaps.argmin())] if gaps.min() <= colour_threshold else None
        cy, cx = float(ys.mean()) + 0.5, float(xs.mean()) + 0.5
        kind = _classify_kind(ys, xs)
        found.append(Detected(kind, colour, _cell_index(cy, h), _cell_index(cx, w), cy, cx, len(ys)))
    return sorted(found, key=lambda d: (d.row, d.col, d.cy, d.cx))


def _relations_hold(scene: Scene, found: list[Detected]) -> bool:
    # Some one-to-one matching of same kind and colour keeps every pair's left/right and above/below order.
    want = scene.shapes
    if len(found) != len(want):
        return False
    pairs = [(i, j) for i in range(len(want)) for j in range(i + 1, len(want))]
    for perm in permutations(found):
        if any((d.kind, d.colour) != (s.kind, s.colour) for s, d in zip(want, perm, strict=True)):
            continue
        if all(
            np.sign(want[i].col - want[j].col) == np.sign(perm[i].col - perm[j].col)
            and np.sign(want[i].row - want[j].row) == np.sign(perm[i].row - perm[j].row)
            for i, j in pairs
        ):
            return True
    return False


def t2i_checks(scene: Scene, image: np.ndarray) -> dict[str, bool]:
    """GenEval-style checks of `image` against `scene`: each is a yes/no, none gives partial credit."""
    found = detect(image)
    want = scene.shapes
    return {
        "count": len(found) == len(want),
        "kinds": Counter(d.kind for d in found) == Counter(s.kind for s in want),
        "colours": Counter((d.kind, d.colour) for d in found) == Counter((s.kind, s.colour) for s in want),
        "positions": Counter((d.kind, d.colour, d.row, d.col) for d in found)
        == Counter((s.kind, s.colour, s.row, s.col) for s in want),
        "relations": _relations_hold(scene, found),
    }


def score_t2i(scene: Scene, image: np.ndarray) -> float:
    """1.0 when every check in `t2i_checks` passes, else 0.0."""
    return 1.0 if all(t2i_checks(scene, image).values()) else 0.0


def edit_checks(edit: Edit, image: np.ndarray) -> dict[str, bool]:
    """The edited image must show the target scene: untouched shapes kept, the edit applied."""
    return t2i_checks(edit.target, image)


def score_edit(edit: Edit, image: np.ndarray) -> float:
    return 1.0 if all(edit_checks(edit, image).values()) else 0.0


def score_vqa(question: Question, text: str) -> float:
    return 1.0 if answer_matches(question, text) else 0.0


def relation_checks(rel: Relation, image: np.ndarray) -> dict[str, bool]:
    """GenEval's position task: exactly the two named objects, in the named order (by grid cell)."""
    found = detect(image)
    named = Counter([rel.first, rel.second])
    firsts = [d for d in found if (d.colour, d.kind) == rel.first]
    seconds = [d for d in found if (d.colour, d.kind) == rel.second]
    return {
        "count": len(found) == 2,
        "objects": Counter((d.colour, d.kind) for d in found) == named,
        "relation": any(rel.holds((a.row, a.col), (b.row, b.col)) for a in firsts for b in seconds if a is not b),
    }


def score_relation(rel: Relation, image: np.ndarray) -> float:
    return 1.0 if all(relation_checks(rel, image).values()) else 0.0
