"""The arith world: determinism, split hygiene, answer lengths and the scorer."""

from __future__ import annotations

import random

import pytest

from lab.worlds import arith


def test_seeded_and_disjoint_splits() -> None:
    a, b = arith.problems("train", 300, seed=3), arith.problems("train", 300, seed=3)
    assert a == b
    held = {p.question for p in arith.problems("heldout", 300)}
    assert not held & {p.question for p in arith.problems("train", 3000)}
    with pytest.raises(ValueError):
        arith.problems("test", 1)


def test_answers_reason_step_by_step_and_are_correct() -> None:
    for p in arith.problems("train", 200, seed=1):
        steps = [s for s in p.answer.split(". ") if " so " in s]
        assert arith.MIN_STEPS <= len(steps) <= arith.MAX_STEPS
        for s in steps:  # every "a + b = c" in the chain is true arithmetic
            expr, result = s.split(" so ")[1].rstrip(".").split(" = ")
            x, op, y = expr.split()
            assert (int(x) + int(y) if op == "+" else int(x) - int(y)) == int(result)
        assert arith.extract_answer(p.answer) == p.result


def test_scorer_exact_answer() -> None:
    p = arith.make_problem(random.Random(0), n_steps=4)
    assert arith.score(p, p.answer) == 1.0
    assert arith.score(p, p.answer.replace(f"The answer is {p.result}.", f"The answer is {p.result + 1}.")) == 0.0
    assert arith.score(p, "no answer here") == 0.0
