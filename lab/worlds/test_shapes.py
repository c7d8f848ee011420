"""The shapes world: determinism, split hygiene, captions, edits, questions and the numpy scorer."""

from __future__ import annotations

import random
import re
from collections import deque
from dataclasses import replace

import numpy as np
import pytest

from lab.worlds import shapes
from lab.worlds.shapes import Edit, Question, Scene, Shape
from lab.worlds.shapes_score import (
    detect,
    label_components,
    relation_checks,
    score_edit,
    score_relation,
    score_t2i,
    score_vqa,
    t2i_checks,
)

CELLS = [(r, c) for r in range(shapes.GRID) for c in range(shapes.GRID)]
NAME_TO_CELL = {shapes.cell_name(r, c): (r, c) for r, c in CELLS}
PHRASE_TO_CELL = {shapes.cell_phrase(r, c): (r, c) for r, c in CELLS}
COUNT_WORDS = {"a": 1, "an": 1, "two": 2, "three": 3}


@pytest.fixture(scope="module")
def heldout_scenes() -> list[Scene]:
    return shapes.scenes("heldout", 300)


@pytest.fixture(scope="module")
def heldout_edits() -> list[Edit]:
    return shapes.edits("heldout", 300)


def _find(scene: Scene, colour: str | None, kind: str) -> Shape:
    """The one shape a reference like "the circle" / "the red circle" names; fails if it is ambiguous."""
    hits = [s for s in scene.shapes if s.kind == kind and colour in (None, s.colour)]
    assert len(hits) == 1, f"ambiguous or dangling reference to {colour} {kind} in {scene.key}"
    return hits[0]


def _noisy(img: np.ndarray, rng: np.random.Generator, std: float = 8.0) -> np.ndarray:
    return np.clip(img + rng.normal(0.0, std, img.shape), 0, 255).astype(np.uint8)


def test_seeded_and_disjoint_splits() -> None:
    a, b = shapes.scenes("train", 300, seed=3), shapes.scenes("train", 300, seed=3)
    assert a == b
    assert all(np.array_equal(shapes.render(x), shapes.render(y)) for x, y in zip(a, b, strict=True))
    assert a != shapes.scenes("train", 300, seed=4)
    assert len({s.key for s in a}) == 300
    assert shapes.edits("train", 100, seed=2) == shapes.edits("train", 100, seed=2)
    assert shapes.questions("train", 100, seed=2) == shapes.questions("train", 100, seed=2)

    train = {s.key for s in shapes.scenes("train", 3000)}
    train |= {k for e in shapes.edits("train", 1000) for k in (e.source.key, e.target.key)}
    train |= {q.scene.key for q in shapes.questions("train", 1000)}
    held = {s.key for s in shapes.scenes("heldout", 300)}
    held |= {e.source.key for e in shapes.edits("heldout", 300)}
    held |= {q.scene.key for q in shapes.questions("heldout", 300)}
    assert not held & train
    for fn in (shapes.scenes, shapes.edits, shapes.questions):
        with pytest.raises(ValueError):
            fn("test", 1)


def test_scenes_are_valid_and_rendered_as_specified() -> None:
    scenes = shapes.scenes("train", 500, seed=1)
    assert {len(s.shapes) for s in scenes} == {1, 2, 3}
    assert any(len(s.shapes) - len({(x.kind, x.colour) for x in s.shapes}) > 0 for s in scenes)  # counting
    img = shapes.render(scenes[0])
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert (img[0] == 255).all() and (img[:, 0] == 255).all()  # shapes keep off the border
    assert set(map(tuple, img.reshape(-1, 3))) <= {shapes.BACKGROUND, *shapes.PALETTE.values()}
    assert shapes.render(scenes[0], 64).shape == (64, 64, 3)
    with pytest.raises(ValueError):
        shapes.render(scenes[0], 16)
    with pytest.raises(ValueError):  # two shapes in one cell
        Scene.of([Shape("circle", "red", 0, 0), Shape("square", "blue", 0, 0)])
    pal = np.array(list(shapes.PALETTE.values()), dtype=float)
    gaps = np.linalg.norm(pal[:, None] - pal[None], axis=-1)
    assert gaps[~np.eye(len(pal), dtype=bool)].min() > 100


def _parse_caption(text: str) -> Scene:
    """Reads a caption back into its scene, which proves captions leave nothing ambiguous."""
    phrases = "|".join(re.escape(p) for p in sorted(PHRASE_TO_CELL, key=len, reverse=True))
    group = re.compile(rf"(a|an|two|three) (\w+) (\w+?)s? ((?:{phrases})(?:(?:, | and )(?:{phrases}))*)")
    out, pos = [], 0
    for m in group.finditer(text):
        assert text[pos : m.start()] in ("", ", ", " and "), text
        cells = [PHRASE_TO_CELL[p] for p in re.findall(phrases, m.group(4))]
        assert len(cells) == COUNT_WORDS[m.group(1)], text
        out += [Shape(m.group(3), m.group(2), r, c) for r, c in cells]
        pos = m.end()
    assert pos == len(text), text
    return Scene.of(out)


def test_captions_determine_their_scene() -> None:
    assert len(PHRASE_TO_CELL) == len(NAME_TO_CELL) == 9
    scenes = shapes.scenes("train", 500, seed=5)
    for s in scenes:
        assert _parse_caption(shapes.caption(s)) == s, shapes.caption(s)
    two = Scene.of([Shape("triangle", "green", 0, 0), Shape("triangle", "green", 2, 2)])
    assert shapes.caption(two) == "two green triangles at the top left and at the bottom right"
    assert shapes.caption(Scene.of([Shape("circle", "orange", 1, 1)])) == "an orange circle in the centre"


def test_scorer_on_ground_truth_and_noise(heldout_scenes: list[Scene], heldout_edits: list[Edit]) -> None:
    rng = np.random.default_rng(0)
    clean = np.mean([score_t2i(s, shapes.render(s)) for s in heldout_scenes])
    edit_clean = np.mean([score_edit(e, shapes.render(e.target)) for e in heldout_edits])
    noisy = np.mean([score_t2i(s, _noisy(shapes.render(s), rng)) for s in heldout_scenes])
    big = np.mean([score_t2i(s, _noisy(shapes.render(s, 64), rng)) for s in heldout_scenes[:100]])
    assert clean >= 0.99, f"ground-truth t2i score {clean:.3f}"
    assert edit_clean >= 0.99, f"ground-truth edit score {edit_clean:.3f}"
    assert noisy >= 0.95, f"t2i score under noise std 8/255: {noisy:.3f}"
    assert big >= 0.95, f"t2i score at 64x64 under noise: {big:.3f}"


def test_scorer_tolerates_blur(heldout_scenes: list[Scene]) -> None:
    def blur(img: np.ndarray) -> np.ndarray:  # separable [1, 2, 1] / 4, like a soft decoder output
        f = img.astype(np.float32)
        f = np.pad(f, ((1, 1), (0, 0), (0, 0)), mode="edge")
        f = (f[:-2] + 2 * f[1:-1] + f[2:]) / 4
        f = np.pad(f, ((0, 0), (1, 1), (0, 0)), mode="edge")
        f = (f[:, :-2] + 2 * f[:, 1:-1] + f[:, 2:]) / 4
        return np.clip(f.round(), 0, 255).astype(np.uint8)

    rng = np.random.default_rng(1)
    got = np.mean([score_t2i(s, _noisy(blur(shapes.render(s)), rng)) for s in heldout_scenes[:150]])
    assert got >= 0.95, f"t2i score on blurred, noisy renders: {got:.3f}"


def _wrong_scenes(scene: Scene, rng: random.Random) -> dict[str, Scene]:
    out: dict[str, Scene] = {}
    i = rng.randrange(len(scene.shapes))
    s, rest = scene.shapes[i], [x for j, x in enumerate(scene.shapes) if j != i]
    out["colour"] = Scene.of([*rest, replace(s, colour=rng.choice([c for c in shapes.COLOURS if c != s.colour]))])
    out["kind"] = Scene.of([*rest, replace(s, kind=rng.choice([k for k in shapes.KINDS if k != s.kind]))])
    if len(scene.shapes) < shapes.MAX_SHAPES:
        r, c = rng.choice(scene.free_cells())
        out["count"] = Scene.of([*scene.shapes, Shape(rng.choice(shapes.KINDS), rng.choice(shapes.COLOURS), r, c)])
    else:
        out["count"] = Scene.of(rest)
    pairs = [(a, b) for a in scene.shapes for b in scene.shapes if (a.kind, a.colour) < (b.kind, b.colour)]
    if pairs:
        a, b = rng.choice(pairs)
        others = [x for x in scene.shapes if x not in (a, b)]
        out["swap"] = Scene.of([*others, replace(a, row=b.row, col=b.col), replace(b, row=a.row, col=a.col)])
    return out


def test_scorer_rejects_wrong_scenes(heldout_scenes: list[Scene]) -> None:
    rng = random.Random(0)
    scores: dict[str, list[float]] = {}
    for scene in heldout_scenes:
        for what, wrong in _wrong_scenes(scene, rng).items():
            assert wrong != scene
            scores.setdefault(what, []).append(score_t2i(scene, shapes.render(wrong)))
    assert set(scores) == {"colour", "kind", "count", "swap"} and min(map(len, scores.values())) >= 50
    for what, got in scores.items():
        assert np.mean(got) < 0.2, f"wrong {what}: scored {np.mean(got):.3f} over {len(got)} scenes"
    assert score_t2i(heldout_scenes[0], np.full((32, 32, 3), 255, np.uint8)) == 0.0


def test_check_breakdown_separates_relations_from_cells() -> None:
    want = Scene.of([Shape("circle", "red", 0, 0), Shape("square", "blue", 0, 2)])
    shifted = Scene.of([Shape("circle", "red", 1, 0), Shape("square", "blue", 1, 1)])  # still left of, same row
    checks = t2i_checks(want, shapes.render(shifted))
    assert checks == {"count": True, "kinds": True, "colours": True, "positions": False, "relations": True}
    grey = shapes.render(want)
    grey[grey[..., 2] == 220] = (110, 110, 110)  # an off-palette square has no colour, so it cannot match
    assert [d.colour for d in detect(grey)] == ["red", None]
    assert t2i_checks(want, grey)["colours"] is False


def _apply(source: Scene, instruction: str) -> tuple[str, Scene]:
    """Applies an instruction by its words alone, independently of how `make_edit` built the target."""
    ref = r"the (?:(\w+) )?(\w+)"
    if m := re.fullmatch(rf"make {ref} (\w+)", instruction):
        s = _find(source, m.group(1), m.group(2))
        assert m.group(3) != s.colour
        return "recolour", Scene.of([x for x in source.shapes if x != s] + [replace(s, colour=m.group(3))])
    if m := re.fullmatch(rf"remove {ref}", instruction):
        s = _find(source, m.group(1), m.group(2))
        return "remove", Scene.of([x for x in source.shapes if x != s])
    if m := re.fullmatch(rf"move {ref} to the (.+)", instruction):
        s, (r, c) = _find(source, m.group(1), m.group(2)), NAME_TO_CELL[m.group(3)]
        assert (r, c) in source.free_cells()
        return "move", Scene.of([x for x in source.shapes if x != s] + [replace(s, row=r, col=c)])
    m = re.fullmatch(r"add an? (\w+) (\w+) (.+)", instruction)
    assert m, instruction
    (r, c) = PHRASE_TO_CELL[m.group(3)]
    assert (r, c) in source.free_cells()
    return "add", Scene.of([*source.shapes, Shape(m.group(2), m.group(1), r, c)])


def test_edits_change_exactly_what_they_say(heldout_edits: list[Edit]) -> None:
    edits = heldout_edits + shapes.edits("train", 300, seed=1)
    assert {e.kind for e in edits} == {"recolour", "remove", "move", "add"}
    for e in edits:
        kind, target = _apply(e.source, e.instruction)
        assert (kind, target) == (e.kind, e.target), e
        assert e.target != e.source
    for e in heldout_edits[:100]:  # the scorer must tell the edited image from the untouched one
        assert score_edit(e, shapes.render(e.source)) == 0.0, e
    with pytest.raises(ValueError):  # nothing can be named uniquely and there is no room to add
        same = Scene.of([Shape("circle", "red", 0, c) for c in range(3)])
        shapes.make_edit(random.Random(0), same)


def _answer(scene: Scene, text: str) -> str:
    """The answer worked out from the question's words and the scene alone."""
    if m := re.fullmatch(r"what colour is the (\w+)\?", text):
        return _find(scene, None, m.group(1)).colour
    if m := re.fullmatch(r"what shape is the (\w+) object\?", text):
        (s,) = [x for x in scene.shapes if x.colour == m.group(1)]
        return s.kind
    if m := re.fullmatch(r"how many (\w+?)s are there\?", text):
        return str(sum(x.kind == m.group(1) for x in scene.shapes))
    if m := re.fullmatch(r"how many (\w+) objects are there\?", text):
        return str(sum(x.colour == m.group(1) for x in scene.shapes))
    if m := re.fullmatch(r"is the (?:(\w+) )?(\w+) on the left, in the centre or on the right\?", text):
        return shapes.COLS[_find(scene, m.group(1), m.group(2)).col]
    m = re.fullmatch(r"is the (?:(\w+) )?(\w+) at the top, in the middle or at the bottom\?", text)
    assert m, text
    return shapes.ROWS[_find(scene, m.group(1), m.group(2)).row]


def test_questions_have_correct_one_word_answers() -> None:
    qs = shapes.questions("heldout", 300) + shapes.questions("train", 300, seed=1)
    assert {q.kind for q in qs} == {"colour", "shape", "count", "position"}
    for q in qs:
        assert q.answer in shapes.ANSWERS
        assert _answer(q.scene, q.text) == q.answer, q
        # The same answer read off the rendered image, so a VQA target is always visible in its image.
        seen = Scene.of([Shape(d.kind, d.colour or "", d.row, d.col) for d in detect(shapes.render(q.scene))])
        assert _answer(seen, q.text) == q.answer, q


def test_answer_matching_normalises() -> None:
    q = Question(Scene.of([Shape("circle", "red", 1, 1)]), "what colour is the circle?", "red", "colour")
    assert all(shapes.answer_matches(q, t) for t in ("red", "Red.", "  RED ", "red!\n"))
    assert not any(shapes.answer_matches(q, t) for t in ("blue", "red circle", "", "redd"))
    n = Question(q.scene, "how many circles are there?", "1", "count")
    assert shapes.answer_matches(n, "One") and shapes.answer_matches(n, "1.") and score_vqa(n, "2") == 0.0
    c = Question(q.scene, "is the circle on the left, in the centre or on the right?", "centre", "position")
    assert shapes.answer_matches(c, "Center")


def test_label_components_matches_bfs() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((17, 23)) < 0.45
        seen, count = np.zeros_like(mask), 0
        for y0, x0 in zip(*np.nonzero(mask), strict=True):
            if seen[y0, x0]:
                continue
            count += 1
            seen[y0, x0] = True
            todo = deque([(y0, x0)])
            while todo:
                y, x = todo.popleft()
                for ny in range(max(0, y - 1), min(mask.shape[0], y + 2)):
                    for nx in range(max(0, x - 1), min(mask.shape[1], x + 2)):
                        if mask[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            todo.append((ny, nx))
        labels = label_components(mask)
        assert ((labels >= 0) == mask).all()
        assert len(np.unique(labels[mask])) == count
        # Neighbours on the mask share a label (so no component is split).
        a, b = labels[:, :-1], labels[:, 1:]
        both = mask[:, :-1] & mask[:, 1:]
        assert (a[both] == b[both]).all()


def test_corpus_texts_cover_all_tasks() -> None:
    texts = shapes.corpus_texts(50)
    assert len(texts) == 162 and any(t.startswith("add ") for t in texts) and any("?" in t for t in texts)
    assert any(" left of " in t for t in texts)
    assert all(texts) and texts == shapes.corpus_texts(50)


FLIP = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def test_relative_prompts_are_true_of_their_scene_and_split_by_text() -> None:
    held = shapes.relations("heldout", 100)
    train = shapes.relations("train", 800)
    assert {r.text for r, _ in held}.isdisjoint({r.text for r, _ in train})
    assert {r.relation for r, _ in held} == set(shapes.RELATIONS)
    for rel, scene in [*held, *train[:200]]:
        assert re.fullmatch(r"an? \w+ \w+ (left of|right of|above|below) an? \w+ \w+", rel.text), rel.text
        a, b = [s for s in scene.shapes if (s.colour, s.kind) == rel.first], \
            [s for s in scene.shapes if (s.colour, s.kind) == rel.second]
        assert len(scene.shapes) == 2 and len(a) == len(b) == 1 and rel.holds(a[0].cell, b[0].cell)
        assert not replace(rel, relation=FLIP[rel.relation]).holds(a[0].cell, b[0].cell)
    with pytest.raises(ValueError, match="the world has about"):
        shapes.relations("heldout", 1000)


def test_relation_scorer_checks_objects_count_and_order() -> None:
    rels = shapes.relations("heldout", 60)
    for rel, scene in rels:
        img = shapes.render(scene, 48)
        assert score_relation(rel, img) == 1.0
        assert score_relation(replace(rel, relation=FLIP[rel.relation]), img) == 0.0
        assert relation_checks(replace(rel, relation=FLIP[rel.relation]), img) == {
            "count": True, "objects": True, "relation": False}
    rel, scene = rels[0]
    free = scene.free_cells()[0]
    extra = Scene.of([*scene.shapes, Shape("circle", "red", *free)])
    assert relation_checks(rel, shapes.render(extra, 48))["count"] is False
    recoloured = Scene.of([replace(scene.shapes[0], colour=next(c for c in shapes.COLOURS if c not in (
        rel.first[0], rel.second[0]))), scene.shapes[1]])
    assert relation_checks(rel, shapes.render(recoloured, 48))["objects"] is False
