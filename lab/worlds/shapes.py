"""A seeded world of flat coloured shapes on a 3x3 grid, for tiny text-to-image, editing and VQA models.

A scene is 1-3 shapes (circle, square, triangle) in six far-apart colours, each centred in its own
cell of a 3x3 grid on a white background, so every image is fully described by a short caption and
"left of"/"above" are always well defined. Shapes have a fixed size per image size and never touch,
which keeps the numpy scorer in `shapes_score` (colour by nearest palette entry, shape by simple
mask features, position by centroid cell) exact on ground truth and tolerant of mild noise.

Captions name every shape with its cell ("a red circle at the top left and two blue squares in the
centre and at the bottom"), so a caption determines its scene and the scorer can check counts,
colours, kinds and positions. Edits and questions only refer to a shape when the reference is
unambiguous, and every answer is one word from `ANSWERS`.

The split is by scene fingerprint: held-out scenes never appear in any training data (scenes,
edit sources or targets, question images).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Literal

import numpy as np

KINDS = ("circle", "square", "triangle")
# Pairwise RGB distances are all > 100, so a blurred or noisy shape still lands on its own colour.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (210, 20, 20),
    "green": (20, 160, 40),
    "blue": (20, 60, 220),
    "yellow": (240, 230, 30),
    "purple": (150, 40, 190),
    "orange": (250, 130, 0),
}
COLOURS = tuple(PALETTE)
BACKGROUND = (255, 255, 255)
ROWS = ("top", "middle", "bottom")
COLS = ("left", "centre", "right")
GRID = 3
MIN_SHAPES, MAX_SHAPES = 1, 3
MIN_SIZE = 32
NUMBERS = ("no", "a", "two", "three")
ANSWERS = (*COLOURS, *KINDS, *ROWS, *COLS, "0", "1", "2", "3")

EditKind = Literal["recolour", "remove", "move", "add"]
QuestionKind = Literal["colour", "shape", "count", "position"]


@dataclass(frozen=True, slots=True)
class Shape:
    kind: str
    colour: str
    row: int
    col: int

    @property
    def cell(self) -> tuple[int, int]:
        return (self.row, self.col)


@dataclass(frozen=True, slots=True)
class Scene:
    """Shapes in row-major cell order, so equal content means equal scenes (and equal captions)."""

    shapes: tuple[Shape, ...]

    def __post_init__(self) -> None:
        cells = [s.cell for s in self.shapes]
        if not MIN_SHAPES <= len(cells) <= MAX_SHAPES:
            raise ValueError(f"a scene has {MIN_SHAPES}-{MAX_SHAPES} shapes, got {len(cells)}")
        if cells != sorted(set(cells)):
            raise ValueError("shapes must be in distinct cells, sorted row-major (use Scene.of)")
        for s in self.shapes:
            if s.kind not in KINDS or s.colour not in PALETTE or not (0 <= s.row < GRID and 0 <= s.col < GRID):
                raise ValueError(f"bad shape {s}")

    @staticmethod
    def of(shapes: list[Shape] | tuple[Shape, ...]) -> Scene:
        return Scene(tuple(sorted(shapes, key=lambda s: s.cell)))

    @property
    def key(self) -> str:
        return "|".join(f"{s.kind}:{s.colour}:{s.row}{s.col}" for s in self.shapes)

    def free_cells(self) -> list[tuple[int, int]]:
        used = {s.cell for s in self.shapes}
        return [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) not in used]


@dataclass(frozen=True, slots=True)
class Edit:
    source: Scene
    instruction: str
    target: Scene
    kind: EditKind


@dataclass(frozen=True, slots=True)
class Question:
    scene: Scene
    text: str
    answer: str  # one word from ANSWERS
    kind: QuestionKind


# ---------------------------------------------------------------------------------------------- words


def cell_name(row: int, col: int) -> str:
    if row == 1:
        return COLS[col]  # "left", "centre", "right"
    return ROWS[row] if col == 1 else f"{ROWS[row]} {COLS[col]}"


def cell_phrase(row: int, col: int) -> str:
    # Natural prepositions; each of the nine phrases is distinct, which is all a parser needs.
    name = cell_name(row, col)
    return {"centre": "in the centre", "left": "on the left", "right": "on the right"}.get(name, f"at the {name}")


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _join(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def caption(scene: Scene) -> str:
    """Groups identical shapes so counts are explicit; every shape's cell is named, in row-major order."""
    groups: dict[tuple[str, str], list[Shape]] = {}
    for s in scene.shapes:
        groups.setdefault((s.colour, s.kind), []).append(s)
    parts = []
    for (colour, kind), members in groups.items():
        n = len(members)
        head = f"{_article(colour)} {colour} {kind}" if n == 1 else f"{NUMBERS[n]} {colour} {kind}s"
        parts.append(f"{head} {_join([cell_phrase(*s.cell) for s in members])}")
    return _join(parts)


RELATIONS = ("left of", "right of", "above", "below")


@dataclass(frozen=True, slots=True)
class Relation:
    """A two-object prompt that fixes only their order ("a red circle left of a blue square"), as in
    GenEval's position task: any scene with exactly these two shapes in that order matches it."""

    first: tuple[str, str]  # (colour, kind), named first
    relation: str  # one of RELATIONS: first <relation> second
    second: tuple[str, str]

    @property
    def text(self) -> str:
        (c1, k1), (c2, k2) = self.first, self.second
        return f"{_article(c1)} {c1} {k1} {self.relation} {_article(c2)} {c2} {k2}"

    def holds(self, first: tuple[int, int], second: tuple[int, int]) -> bool:
        """Whether cells (row, col) `first` and `second` are in this order."""
        (r1, c1), (r2, c2) = first, second
        return {"left of": c1 < c2, "right of": c1 > c2, "above": r1 < r2, "below": r1 > r2}[self.relation]


def relation_of(rng: random.Random, scene: Scene) -> Relation | None:
    """A true relative prompt for a two-shape scene whose shapes differ in colour or kind, else None."""
    if len(scene.shapes) != 2 or (scene.shapes[0].colour, scene.shapes[0].kind) == (
            scene.shapes[1].colour, scene.shapes[1].kind):
        return None
    a, b = scene.shapes if rng.random() < 0.5 else scene.shapes[::-1]
    rel = Relation((a.colour, a.kind), "", (b.colour, b.kind))
    true = [r for r in RELATIONS if replace(rel, relation=r).holds(a.cell, b.cell)]
    return replace(rel, relation=rng.choice(true))


def reference(scene: Scene, shape: Shape) -> str | None:
    """The shortest unambiguous name of `shape` in `scene` ("the circle", "the red circle"), or None."""
    if sum(s.kind == shape.kind for s in scene.shapes) == 1:
        return f"the {shape.kind}"
    if sum((s.kind, s.colour) == (shape.kind, shape.colour) for s in scene.shapes) == 1:
        return f"the {shape.colour} {shape.kind}"
    return None


# ---------------------------------------------------------------------------------------------- scenes


def make_scene(rng: random.Random, n_shapes: int | None = None) -> Scene:
    n = n_shapes if n_shapes is not None else rng.randint(MIN_SHAPES, MAX_SHAPES)
    cells = rng.sample([(r, c) for r in range(GRID) for c in range(GRID)], n)
    shapes: list[Shape] = []
    for row, col in cells:
        kind, colour = rng.choice(KINDS), rng.choice(COLOURS)
        # Repeats are rare under independent draws (1 in 18); counting captions and questions need more.
        if shapes and rng.random() < 0.4:
            prev = rng.choice(shapes)
            kind = prev.kind
            colour = prev.colour if rng.random() < 0.5 else colour
        shapes.append(Shape(kind, colour, row, col))
    return Scene.of(shapes)


def cell_edges(size: int) -> list[int]:
    return [round(i * size / GRID) for i in range(GRID + 1)]


def shape_extent(size: int) -> int:
    # Leaves at least a 1-pixel margin inside the narrowest cell, so neighbours are >= 2 pixels apart.
    return size // GRID - 2


@lru_cache(maxsize=32)
def shape_mask(kind: str, extent: int) -> np.ndarray:
    """Boolean extent x extent mask, sampled at pixel centres (no anti-aliasing: flat colours only)."""
    t = (np.arange(extent) + 0.5) / extent
    y, x = np.meshgrid(t, t, indexing="ij")
    if kind == "square":
        mask = np.ones((extent, extent), dtype=bool)
    elif kind == "circle":
        mask = (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
    elif kind == "triangle":
        # Apex up; rows are measured to their bottom edge so the apex row is not empty.
        mask = np.abs(x - 0.5) <= (y + 0.5 / extent) / 2
    else:
        raise ValueError(f"unknown kind {kind!r}")
    mask.setflags(write=False)
    return mask


def render(scene: Scene, size: int = MIN_SIZE) -> np.ndarray:
    """An HxWx3 uint8 image of `scene`."""
    if size < MIN_SIZE:
        raise ValueError(f"size must be >= {MIN_SIZE}, got {size}")
    img = np.empty((size, size, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    edges, extent = cell_edges(size), shape_extent(size)
    for s in scene.shapes:
        y0 = edges[s.row] + (edges[s.row + 1] - edges[s.row] - extent) // 2
        x0 = edges[s.col] + (edges[s.col + 1] - edges[s.col] - extent) // 2
        img[y0 : y0 + extent, x0 : x0 + extent][shape_mask(s.kind, extent)] = PALETTE[s.colour]
    return img


# ---------------------------------------------------------------------------------------------- edits


def make_edit(rng: random.Random, scene: Scene) -> Edit:
    """A random unambiguous edit of `scene`; ValueError when none exists (e.g. three identical shapes)."""
    named = [(s, ref) for s in scene.shapes if (ref := reference(scene, s)) is not None]
    free = scene.free_cells()
    options: list[EditKind] = []
    if named:
        options += ["recolour", "move"]
        if len(scene.shapes) > MIN_SHAPES:
            options.append("remove")
    if len(scene.shapes) < MAX_SHAPES:
        options.append("add")
    if not options:
        raise ValueError(f"no unambiguous edit of {scene.key}")
    kind = rng.choice(options)
    others = list(scene.shapes)
    if kind == "add":
        row, col = rng.choice(free)
        new = Shape(rng.choice(KINDS), rng.choice(COLOURS), row, col)
        instruction = f"add {_article(new.colour)} {new.colour} {new.kind} {cell_phrase(row, col)}"
        return Edit(scene, instruction, Scene.of([*others, new]), kind)
    shape, ref = rng.choice(named)
    others.remove(shape)
    if kind == "recolour":
        colour = rng.choice([c for c in COLOURS if c != shape.colour])
        return Edit(scene, f"make {ref} {colour}", Scene.of([*others, replace(shape, colour=colour)]), kind)
    if kind == "remove":
        return Edit(scene, f"remove {ref}", Scene.of(others), kind)
    row, col = rng.choice(free)
    name = cell_name(row, col)
    return Edit(scene, f"move {ref} to the {name}", Scene.of([*others, replace(shape, row=row, col=col)]), kind)


# ---------------------------------------------------------------------------------------------- questions


def make_question(rng: random.Random, scene: Scene) -> Question:
    counts = Counter(s.kind for s in scene.shapes)
    colour_counts = Counter(s.colour for s in scene.shapes)
    unique_kind = [s for s in scene.shapes if counts[s.kind] == 1]
    unique_colour = [s for s in scene.shapes if colour_counts[s.colour] == 1]
    named = [(s, ref) for s in scene.shapes if (ref := reference(scene, s)) is not None]
    options: list[QuestionKind] = ["count"]
    options += ["colour"] * bool(unique_kind) + ["shape"] * bool(unique_colour) + ["position"] * bool(named)
    kind = rng.choice(options)
    if kind == "colour":
        s = rng.choice(unique_kind)
        return Question(scene, f"what colour is the {s.kind}?", s.colour, kind)
    if kind == "shape":
        s = rng.choice(unique_colour)
        return Question(scene, f"what shape is the {s.colour} object?", s.kind, kind)
    if kind == "position":
        s, ref = rng.choice(named)
        if rng.random() < 0.5:
            return Question(scene, f"is {ref} on the left, in the centre or on the right?", COLS[s.col], kind)
        return Question(scene, f"is {ref} at the top, in the middle or at the bottom?", ROWS[s.row], kind)
    if rng.random() < 0.7:  # count: absent kinds ("0") are fair questions too
        k = rng.choice(KINDS)
        return Question(scene, f"how many {k}s are there?", str(counts[k]), kind)
    c = rng.choice(COLOURS)
    return Question(scene, f"how many {c} objects are there?", str(colour_counts[c]), kind)


_SYNONYMS = {"center": "centre", "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3"}
_NON_WORD = re.compile(r"[^a-z0-9]+")


def normalise_answer(text: str) -> str:
    words = _NON_WORD.sub(" ", text.lower()).split()
    return " ".join(_SYNONYMS.get(w, w) for w in words)


def answer_matches(question: Question, text: str) -> bool:
    """Exact match after case, whitespace and punctuation are normalised ("Red." matches "red")."""
    return normalise_answer(text) == question.answer


# ---------------------------------------------------------------------------------------------- splits


def _is_heldout(scene: Scene) -> bool:
    # 1 in 10 scenes (by content hash) is reserved for evaluation, whatever seed or task produced it.
    return hashlib.sha256(f"shapes/{scene.key}".encode()).digest()[0] < 26


def _is_heldout_text(text: str) -> bool:
    return hashlib.sha256(f"shapes/text/{text}".encode()).digest()[0] < 26


def _check_split(split: str) -> bool:
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    return split == "heldout"


def scenes(split: str, n: int, seed: int = 0) -> list[Scene]:
    """`n` distinct scenes of `split` ("train" or "heldout"), deterministic for a seed."""
    heldout = _check_split(split)
    rng = random.Random(f"shapes/scenes/{split}/{seed}")
    out: list[Scene] = []
    seen: set[str] = set()
    while len(out) < n:
        s = make_scene(rng)
        if _is_heldout(s) == heldout and s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out


def edits(split: str, n: int, seed: int = 0) -> list[Edit]:
    """`n` distinct edits; held-out edits have held-out sources, training edits touch no held-out scene."""
    heldout = _check_split(split)
    rng = random.Random(f"shapes/edits/{split}/{seed}")
    out: list[Edit] = []
    seen: set[tuple[str, str]] = set()
    while len(out) < n:
        source = make_scene(rng)
        if _is_heldout(source) != heldout:
            continue
        try:
            e = make_edit(rng, source)
        except ValueError:
            continue
        if (heldout or not _is_heldout(e.target)) and (source.key, e.instruction) not in seen:
            seen.add((source.key, e.instruction))
            out.append(e)
    return out


def questions(split: str, n: int, seed: int = 0) -> list[Question]:
    """`n` distinct (scene, question) pairs whose scenes belong to `split`."""
    heldout = _check_split(split)
    rng = random.Random(f"shapes/questions/{split}/{seed}")
    out: list[Question] = []
    seen: set[tuple[str, str]] = set()
    while len(out) < n:
        s = make_scene(rng)
        if _is_heldout(s) != heldout:
            continue
        q = make_question(rng, s)
        if (s.key, q.text) not in seen:
            seen.add((s.key, q.text))
            out.append(q)
    return out


def relations(split: str, n: int, seed: int = 0) -> list[tuple[Relation, Scene]]:
    """`n` distinct relative prompts with a two-shape scene each that matches them. Prompts are split by
    their own text as well as by scene, so a held-out prompt was never a training caption."""
    heldout = _check_split(split)
    rng = random.Random(f"shapes/relations/{split}/{seed}")
    out: list[tuple[Relation, Scene]] = []
    seen: set[Relation] = set()
    for _ in range(2000 * n):  # there are only ~1200 prompts, ~10 % of them held out
        if len(out) == n:
            return out
        s = make_scene(rng, 2)
        if _is_heldout(s) != heldout or (rel := relation_of(rng, s)) is None:
            continue
        if _is_heldout_text(rel.text) == heldout and rel not in seen:
            seen.add(rel)
            out.append((rel, s))
    if len(out) < n:
        raise ValueError(f"asked for {n} {split} relative prompts; the world has about {len(out)}")
    return out


def corpus_texts(n: int, seed: int = 0) -> list[str]:
    """Captions, instructions, questions and answers from training data, for training the tokenizer."""
    texts = [caption(s) for s in scenes("train", n, seed)]
    texts += [r.text for r, _ in relations("train", n // 4, seed)]
    texts += [e.instruction for e in edits("train", n, seed)]
    texts += [f"{q.text} {q.answer}" for q in questions("train", n, seed)]
    return texts
