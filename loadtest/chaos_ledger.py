"""The chaos benchmark's accounting (loadtest/chaos_driver.py runs the load and the faults): one record per
SDK call, the verdict on each (done, error CODE, not acknowledged, lost, duplicated), the per-phase
summary and the table. Pure functions of the records, so tests check them without a stack."""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field

TEXT_KINDS = ("stream", "unary", "job")


# ---- one SDK call -----------------------------------------------------------------------------------------


@dataclass
class Call:
    """One SDK call the load made, and what its client saw."""

    n: int
    phase: str
    kind: str  # stream | unary | job | image
    prompt: str
    key: str  # its idempotency key
    slow: bool  # decoded one token per forward (SLOW)
    start: float  # seconds since the run started
    end: float | None = None
    job_id: str = ""
    result: str | None = None  # the result text (images: "png <bytes>")
    streamed: str = ""  # the chunks, concatenated (stream and job kinds)
    chunks: int = 0
    first_chunk: float | None = None  # when the first chunk (or image progress) arrived
    bad_totals: int = 0  # chunks whose total_tokens is not the running sum of token counts
    progress: list[int] = field(default_factory=list)  # an image's patches_done, in order
    error: str = ""  # status code name of the error the client got ("" = none)
    detail: str = ""
    hung: bool = False  # still running after the grace period (cancelled by the harness)
    # filled in by the accounting:
    outcome: str = ""  # done | error | not_acknowledged | lost | duplicated
    why: str = ""
    acknowledged: bool = False  # a job id came back, or the store holds a job for its key
    job_state: str = ""  # the job's state in the store at the end ("" = no job found)
    attempts: int = 0  # dispatch attempts of its job (> 1: retried or reclaimed)

    @property
    def latency_s(self) -> float | None:
        return None if self.end is None else self.end - self.start


@dataclass(frozen=True)
class JobView:
    """What the store says of a job at the end (from ListJobs / GetJob)."""

    id: str
    key: str
    state: str  # JOB_STATE_* name
    attempts: int = 0


TERMINAL_STATES = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")


def classify(c: Call, jobs: Sequence[JobView], reference: str | None) -> tuple[str, str]:
    """The outcome of one call (done, error, not_acknowledged, lost, duplicated) and why.

    `jobs`: the jobs the store holds for the call (by its idempotency key, and the job id it received);
    `reference`: the text its prompt should produce (None: unknown)."""
    ids = {j.id for j in jobs} | ({c.job_id} if c.job_id else set())
    if len(ids) > 1:
        return "duplicated", f"{len(ids)} jobs for one SDK call: {sorted(ids)}"
    job = next(iter(jobs), None)
    acknowledged = bool(ids)
    if c.result is not None:
        if c.kind in ("stream", "job") and c.streamed != c.result:
            return "duplicated", f"chunks {c.streamed!r} != result {c.result!r}"
        if c.bad_totals:
            return "duplicated", f"{c.bad_totals} chunk(s) whose total_tokens is not the running sum"
        if c.kind == "image" and any(b <= a for a, b in zip(c.progress, c.progress[1:], strict=False)):
            return "duplicated", f"image progress not strictly increasing: {c.progress}"
        if reference is not None and c.kind in TEXT_KINDS and c.result != reference:
            return "duplicated", f"result {c.result!r} != the prompt's reference {reference!r}"
        return "done", ""
    if c.hung:
        return "lost", ("still waiting after the grace period" if acknowledged
                        else "no answer after the grace period (and no job)")
    if job is not None and job.state not in TERMINAL_STATES:
        return "lost", f"client got {c.error or 'nothing'}; the job is still {job.state} at the end"
    if acknowledged and job is None:
        return "lost", f"client got {c.error or 'nothing'}; job {c.job_id} is gone from the store"
    if c.error == "NOT_FOUND" and acknowledged:
        return "lost", f"NOT_FOUND: {c.detail}"
    if c.error:
        return ("error", c.error) if acknowledged else ("not_acknowledged", c.error)
    return "lost", "the call ended without a result or an error"


def references(calls: Sequence[Call]) -> dict[tuple[str, bool], str]:
    """The expected text per (prompt, slow decoding): what the baseline gave (greedy decoding: one answer
    each), or failing that, the text most calls of it got (when at least two did)."""
    base: dict[tuple[str, bool], str] = {}
    seen: dict[tuple[str, bool], collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for c in calls:
        if c.kind in TEXT_KINDS and c.result is not None:
            seen[c.prompt, c.slow][c.result] += 1
            if c.phase == "baseline":
                base.setdefault((c.prompt, c.slow), c.result)
    out = dict(base)
    for k, counts in seen.items():
        if k not in out and sum(counts.values()) >= 2:
            out[k] = counts.most_common(1)[0][0]
    return out


def pct(xs: Sequence[float], q: float) -> float | None:
    """Percentile q (0-100), linear interpolation (numpy's default); None without samples."""
    s = sorted(xs)
    if not s:
        return None
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


# ---- per phase ----------------------------------------------------------------------------------------------


@dataclass
class PhaseResult:
    name: str
    fault: str
    started_s: float = 0.0
    fault_s: float | None = None  # when the fault landed (seconds since the run started)
    restart_s: float | None = None  # how long the killed part took to come back (as the harness saw it)
    submitted: int = 0
    acknowledged: int = 0
    done: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    not_acknowledged: dict[str, int] = field(default_factory=dict)
    lost: int = 0
    duplicated: int = 0
    p50_s: float | None = None
    p99_s: float | None = None
    recovery_s: float | None = None
    in_flight_at_fault: int | None = None  # calls started and not yet ended when the fault landed
    mid_stream_at_fault: int | None = None  # of those, streams that had received part of their output
    retried: int = 0  # calls whose job took more than one dispatch attempt (retried or reclaimed)
    by_kind: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # lost and duplicated calls, first ones

    @property
    def passed(self) -> bool:
        return self.lost == 0 and self.duplicated == 0


def summarize(phase: PhaseResult, calls: Sequence[Call]) -> PhaseResult:
    phase.submitted = len(calls)
    phase.by_kind = dict(collections.Counter(c.kind for c in calls))
    phase.acknowledged = sum(c.acknowledged or bool(c.job_id) for c in calls)
    phase.done = sum(c.outcome == "done" for c in calls)
    phase.errors = dict(collections.Counter(c.why for c in calls if c.outcome == "error"))
    phase.not_acknowledged = dict(collections.Counter(c.why for c in calls if c.outcome == "not_acknowledged"))
    phase.lost = sum(c.outcome == "lost" for c in calls)
    phase.duplicated = sum(c.outcome == "duplicated" for c in calls)
    lat = [c.latency_s for c in calls if c.kind in TEXT_KINDS and c.result is not None and c.latency_s is not None]
    phase.p50_s, phase.p99_s = pct(lat, 50), pct(lat, 99)  # type: ignore[arg-type]
    phase.retried = sum(c.attempts > 1 for c in calls)
    if phase.fault_s is not None:
        f = phase.fault_s
        after = [c.end - f for c in calls
                 if c.kind in TEXT_KINDS and c.start >= f and c.result is not None and c.end is not None]
        phase.recovery_s = min(after) if after else None
        in_flight = [c for c in calls if c.start <= f and (c.end is None or c.end > f)]
        phase.in_flight_at_fault = len(in_flight)
        phase.mid_stream_at_fault = sum(c.first_chunk is not None and c.first_chunk <= f for c in in_flight)
    phase.problems = [f"#{c.n} {c.kind} {c.outcome}: {c.why} (job {c.job_id or '?'}, key {c.key})"
                      for c in calls if c.outcome in ("lost", "duplicated")][:10]
    return phase


def _fmt_s(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _codes(d: dict[str, int]) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(d.items())) or "0"


def table(phases: Sequence[PhaseResult]) -> str:
    head = ["phase", "fault", "calls", "acked", "done", "errors", "not acked", "lost", "dup", "in flight (mid)",
            "retried", "p50 s", "p99 s", "recovery s", "restart s", "verdict"]
    rows = [[p.name, p.fault, str(p.submitted), str(p.acknowledged), str(p.done), _codes(p.errors),
             _codes(p.not_acknowledged), str(p.lost), str(p.duplicated),
             "-" if p.in_flight_at_fault is None else f"{p.in_flight_at_fault} ({p.mid_stream_at_fault})",
             str(p.retried),
             _fmt_s(p.p50_s), _fmt_s(p.p99_s), _fmt_s(p.recovery_s), _fmt_s(p.restart_s),
             "PASS" if p.passed else "FAIL"] for p in phases]
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = lambda r: "| " + " | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) + " |"  # noqa: E731
    return "\n".join([line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])
