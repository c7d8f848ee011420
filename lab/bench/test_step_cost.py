"""The step-cost bench: which steps count, the ceiling arithmetic, and its CLI on a tiny run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from lab.bench.steps import StepSample, summarize


def test_only_steps_of_exactly_b_decode_windows_count() -> None:
    samples = {
        1: [StepSample(1, True, 0.002, 0.0018), StepSample(1, True, 0.004, 0.0035), StepSample(1, False, 0.05, 0.05)],
        4: [StepSample(4, True, 0.004, 0.003), StepSample(3, True, 0.001, 0.001), StepSample(4, False, 0.09, 0.09)],
    }
    one, four = summarize([samples])
    assert (one.batch, one.steps, four.steps) == (1, 2, 1)
    assert one.step_ms == pytest.approx(3.0) and one.run_ms == pytest.approx(2.65)
    assert four.step_ms == pytest.approx(4.0) and four.rest_ms == pytest.approx(1.0)
    assert four.per_token_ms == pytest.approx(1.0)
    assert four.ceiling == pytest.approx(4 * 3.0 / 4.0)  # b * step(1) / step(b)


def test_the_ceiling_pairs_each_round_with_its_own_batch_1() -> None:
    # The machine is twice as slow in round 2: each round's ratio is 8x, a pooled median would not be.
    fast = {1: [StepSample(1, True, 0.002, 0.002)] * 3, 16: [StepSample(16, True, 0.004, 0.003)]}
    slow = {1: [StepSample(1, True, 0.004, 0.004)], 16: [StepSample(16, True, 0.008, 0.006)] * 3}
    _, sixteen = summarize([fast, slow])
    assert sixteen.ceiling == pytest.approx(8.0) and sixteen.ceiling_min == sixteen.ceiling_max == pytest.approx(8.0)
    assert sixteen.step_ms == pytest.approx(8.0)  # the pooled median is still reported as the step's cost


def test_a_batch_with_no_clean_step_is_left_out() -> None:
    rows = summarize([{1: [StepSample(1, True, 0.002, 0.001)], 16: [StepSample(15, True, 0.004, 0.003)]}])
    assert [r.batch for r in rows] == [1]


def test_cli_json_on_a_tiny_run() -> None:
    out = subprocess.run([sys.executable, "-m", "lab.bench.step_cost", "--batches", "1,4", "--rounds", "1",
                          "--max-tokens", "24", "--json"], capture_output=True, text=True, timeout=300, check=True)
    result = json.loads(out.stdout)
    rows = {r["batch"]: r for r in result["rows"]}
    assert result["method"] == "ar" and set(rows) == {1, 4}
    assert rows[1]["ceiling"] == pytest.approx(1.0) and rows[4]["steps"] > 0
    assert rows[4]["ceiling_min"] <= rows[4]["ceiling"] <= rows[4]["ceiling_max"]
    for r in rows.values():
        assert r["step_ms"] >= r["run_ms"] > 0 and r["per_token_ms"] == pytest.approx(r["step_ms"] / r["batch"])
