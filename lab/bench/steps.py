"""Timing the engine's own steps: which steps ran a clean batch of b decode windows, what they cost,
and the ceiling that puts on batching (used by `lab.bench.step_cost` and the concurrency bench)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

from models.engine import TextEngine


@dataclass(slots=True)
class StepSample:
    windows: int  # sequences in the step's forward
    decode_only: bool  # every window one token (no prompt in the step)
    step_s: float
    run_s: float  # the batched forward with its inputs


@dataclass(slots=True)
class CostRow:
    batch: int
    steps: int  # steps that ran exactly `batch` decode windows
    step_ms: float  # their median
    run_ms: float  # the forward with its inputs (median)
    rest_ms: float  # the step outside it: step_ms - run_ms
    per_token_ms: float  # step_ms / batch
    ceiling: float  # batch * step(1) / step(batch), each round's own ratio, median over rounds
    ceiling_min: float  # the lowest and highest round
    ceiling_max: float


def record_steps(engine: TextEngine) -> list[StepSample]:
    """Time every step of `engine` from now on (appends to the returned list)."""
    core, runner = engine.core, engine.core.runner
    out: list[StepSample] = []
    pending: list[tuple[int, bool, float]] = []
    run, step = runner.run, core.step

    def timed_run(windows: list[Any], tables: list[list[int]]) -> Any:
        t = time.perf_counter()
        r = run(windows, tables)
        pending.append((len(windows), all(len(w.tokens) == 1 for w in windows), time.perf_counter() - t))
        return r

    def timed_step() -> None:
        t = time.perf_counter()
        step()
        dt = time.perf_counter() - t
        if pending:
            n, dec, rt = pending.pop()
            out.append(StepSample(n, dec, dt, rt))
        pending.clear()

    runner.run = timed_run  # type: ignore[method-assign]
    core.step = timed_step  # type: ignore[method-assign]
    return out


def _clean(steps: list[StepSample], b: int) -> list[StepSample]:
    return [s for s in steps if s.windows == b and s.decode_only]


def summarize(rounds: list[dict[int, list[StepSample]]]) -> list[CostRow]:
    """One row per batch size from the steps that ran exactly that many decode windows. The
    ceiling pairs batch b with batch 1 of the same round (seconds apart), so the machine's drift
    between rounds falls on both sides of each ratio."""
    sizes = sorted({b for r in rounds for b in r})
    rows = []
    for b in sizes:
        got = [s for r in rounds for s in _clean(r.get(b, []), b)]
        if not got:
            continue
        step = statistics.median(s.step_s for s in got) * 1e3
        run = statistics.median(s.run_s for s in got) * 1e3
        ratios = []
        for r in rounds:
            one, this = _clean(r.get(1, []), 1), _clean(r.get(b, []), b)
            if one and this:
                ratios.append(b * statistics.median(s.step_s for s in one) / statistics.median(s.step_s for s in this))
        nan = float("nan")
        rows.append(CostRow(b, len(got), step, run, step - run, step / b, statistics.median(ratios) if ratios else nan,
                            min(ratios, default=nan), max(ratios, default=nan)))
    return rows
