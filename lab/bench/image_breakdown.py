"""Where edits fail: `python -m lab.bench image --breakdown [--problems N]`.

An edit is scored all-or-nothing (`score_edit`); this splits the held-out edits into cells, one per
grid cell = one VAE token in row-major order, and counts per token index:
- kept shapes: the same shape in source and target (the model must copy it);
- kept empty cells; changed cells (what the instruction changes, the vacated cell of a move included);
plus what went wrong with each kept shape (missing, wrong colour, wrong kind, both) and the success
rate per edit kind. On the committed NextStep checkpoint a kept shape is copied right 26/26 times at
token 0 and 17/32 at token 8, and most misses are a random wrong colour with the kind right: the
copy loses detail the further it is into the image, which is what a recipe change must move.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from lab.worlds import shapes, shapes_score

CELLS = shapes.GRID * shapes.GRID
Images = np.ndarray
EditFn = Callable[[Images, list[str], int], Images]  # (sources, instructions, seed) -> edited images


@dataclass(slots=True)
class EditBreakdown:
    edits: int = 0
    succeeded: int = 0
    kept_shape: list[list[int]] = field(default_factory=lambda: [[0, 0] for _ in range(CELLS)])  # [right, total]
    kept_empty: list[list[int]] = field(default_factory=lambda: [[0, 0] for _ in range(CELLS)])
    changed: list[list[int]] = field(default_factory=lambda: [[0, 0] for _ in range(CELLS)])
    kept_errors: Counter[str] = field(default_factory=Counter)
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # edit kind -> [succeeded, total]

    def add(self, edit: shapes.Edit, image: np.ndarray) -> None:
        """Account one edited image against its edit."""
        found = {(d.row, d.col): (d.kind, d.colour) for d in shapes_score.detect(image)}
        src = {s.cell: (s.kind, s.colour) for s in edit.source.shapes}
        tgt = {s.cell: (s.kind, s.colour) for s in edit.target.shapes}
        for cell in ((r, c) for r in range(shapes.GRID) for c in range(shapes.GRID)):
            want, got, i = tgt.get(cell), found.get(cell), cell[0] * shapes.GRID + cell[1]
            table = self.changed if src.get(cell) != want else self.kept_shape if want else self.kept_empty
            table[i][1] += 1
            table[i][0] += got == want
            if table is self.kept_shape and want is not None and got != want:
                self.kept_errors["missing" if got is None else "colour" if got[0] == want[0]
                                 else "kind" if got[1] == want[1] else "both"] += 1
        ok = shapes_score.score_edit(edit, image) == 1.0
        self.edits += 1
        self.succeeded += ok
        k = self.by_kind.setdefault(edit.kind, [0, 0])
        k[0] += ok
        k[1] += 1

    def format(self) -> str:
        def row(name: str, table: list[list[int]]) -> str:
            return f"  {name:12}" + " ".join(f"{r:>3}/{t:<3}" if t else "   -   " for r, t in table)

        return "\n".join([
            f"edits: {self.succeeded}/{self.edits} succeeded; by kind: "
            + ", ".join(f"{k} {s}/{t}" for k, (s, t) in sorted(self.by_kind.items())),
            "cells right, by token index (row-major grid cell):",
            f"  {'':12}" + " ".join(f"{i:^7}" for i in range(CELLS)),
            row("kept shape", self.kept_shape), row("kept empty", self.kept_empty), row("changed", self.changed),
            "kept shapes gone wrong: " + (", ".join(f"{k} {n}" for k, n in self.kept_errors.most_common()) or "none"),
        ])


def edit_breakdown(edit: EditFn, problems: int, seed: int = 0, size: int = 48, batch: int = 8) -> EditBreakdown:
    """`edit(sources (B, H, W, 3) uint8, instructions, seed) -> images` on `problems` held-out edits."""
    if problems <= 0:
        raise ValueError(f"problems must be positive, got {problems}")
    edits = shapes.edits("heldout", problems, seed)
    out = EditBreakdown()
    for start in range(0, problems, batch):
        chunk = edits[start:start + batch]
        images = edit(np.stack([shapes.render(e.source, size) for e in chunk]), [e.instruction for e in chunk],
                      seed + start)
        for e, img in zip(chunk, images, strict=True):
            out.add(e, img)
    return out
