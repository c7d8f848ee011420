"""The text bench's problem sets: seed 0 is the set the recipe was tuned on; other seeds avoid it."""

from __future__ import annotations

from lab.bench.text import TUNED_ON, fresh_problems
from lab.worlds import arith


def test_fresh_problems_avoid_the_tuned_on_set_and_are_reproducible() -> None:
    tuned = {p.question for p in arith.problems("heldout", TUNED_ON)}
    fresh = fresh_problems(200, seed=1)
    assert len(fresh) == 200 and len({p.question for p in fresh}) == 200
    assert not tuned & {p.question for p in fresh}
    assert fresh == fresh_problems(200, seed=1) and fresh != fresh_problems(200, seed=2)
    assert fresh_problems(10, seed=0) == arith.problems("heldout", 10)  # seed 0 stays the historical set
