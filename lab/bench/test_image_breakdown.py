"""The edit breakdown on oracle editors: ones whose outcome per cell is known without a model."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from lab.bench.image_breakdown import CELLS, edit_breakdown
from lab.worlds import shapes

N = 40


def _editor(scene_of: Callable[[shapes.Edit], shapes.Scene]) -> Callable[[np.ndarray, list[str], int], np.ndarray]:
    """Renders scene_of(edit) for each edit; a batch's seed is its first edit's index (seed 0)."""
    edits = shapes.edits("heldout", N, 0)

    def edit(sources: np.ndarray, instructions: list[str], seed: int) -> np.ndarray:
        chosen = edits[seed:seed + len(instructions)]
        assert [e.instruction for e in chosen] == instructions
        assert all((shapes.render(e.source, 48) == s).all() for e, s in zip(chosen, sources, strict=True))
        return np.stack([shapes.render(scene_of(e), 48) for e in chosen])

    return edit


def _totals(table: list[list[int]]) -> tuple[int, int]:
    return sum(r for r, _ in table), sum(t for _, t in table)


def test_perfect_editor_gets_every_cell_right() -> None:
    b = edit_breakdown(_editor(lambda e: e.target), N)
    assert b.edits == b.succeeded == N and not b.kept_errors
    for table in (b.kept_shape, b.kept_empty, b.changed):
        right, total = _totals(table)
        assert right == total
    # Every cell of every edit is counted exactly once, and each edit changes at least one cell.
    assert sum(_totals(t)[1] for t in (b.kept_shape, b.kept_empty, b.changed)) == N * CELLS
    assert _totals(b.changed)[1] >= N and sum(t for _, t in b.by_kind.values()) == N
    assert "40/40 succeeded" in b.format()


def test_copying_editor_keeps_what_stays_and_misses_every_change() -> None:
    b = edit_breakdown(_editor(lambda e: e.source), N)  # returns the source unchanged
    assert b.succeeded == 0 and not b.kept_errors
    assert _totals(b.kept_shape)[0] == _totals(b.kept_shape)[1] > 0
    assert _totals(b.changed)[0] == 0


def test_recolouring_editor_shows_up_as_colour_errors() -> None:
    def wrong(e: shapes.Edit) -> shapes.Scene:
        kept = {s.cell for s in e.source.shapes} & {s.cell for s in e.target.shapes}
        other = {c: next(x for x in shapes.COLOURS if x != c) for c in shapes.COLOURS}
        return shapes.Scene.of([shapes.Shape(s.kind, other[s.colour], s.row, s.col) if s.cell in kept
                                and s in e.source.shapes else s for s in e.target.shapes])

    b = edit_breakdown(_editor(wrong), N)
    assert set(b.kept_errors) == {"colour"} and b.kept_errors["colour"] == _totals(b.kept_shape)[1] > 0
    with pytest.raises(ValueError):
        edit_breakdown(_editor(wrong), 0)
