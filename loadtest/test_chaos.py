"""The chaos benchmark's accounting (loadtest.chaos), without processes: every way a call can end is
told apart, and a lost or duplicated job fails the phase. (The benchmark itself, short, runs in
tests/integration/test_chaos.py.)"""

from __future__ import annotations

import pytest

from loadtest.chaos import Options
from loadtest.chaos_ledger import Call, JobView, PhaseResult, classify, references, summarize, table

ANSWER = " Tom starts with 5 apples. He buys 3, so 5 + 3 = 8. The answer is 8."


def call(kind: str = "stream", **kw: object) -> Call:
    c = Call(kw.pop("n", 0), kw.pop("phase", "gateway"), kind, kw.pop("prompt", "Tom has 5 apples..."),  # type: ignore[arg-type]
             kw.pop("key", "k1"), kw.pop("slow", False), kw.pop("start", 1.0))  # type: ignore[arg-type]
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def job(state: str = "JOB_STATE_SUCCEEDED", job_id: str = "j1", key: str = "k1") -> JobView:
    return JobView(job_id, key, state, 1)


def test_a_whole_result_is_done() -> None:
    c = call(job_id="j1", result=ANSWER, streamed=ANSWER, end=2.0)
    assert classify(c, [job()], ANSWER) == ("done", "")
    assert classify(call("unary", job_id="j1", result=ANSWER, end=2.0), [job()], None) == ("done", "")
    image = call("image", job_id="j1", result="png 99 bytes", progress=[1, 2, 3, 4])
    assert classify(image, [job()], None) == ("done", "")


@pytest.mark.parametrize("c, why", [
    (call(job_id="j1", result=ANSWER, streamed=ANSWER[:30] + ANSWER), "chunks"),  # a chunk sent twice
    (call("job", job_id="j1", result=ANSWER, streamed=ANSWER[:-5]), "chunks"),  # a chunk missing
    (call(job_id="j1", result=ANSWER, streamed=ANSWER, bad_totals=1), "total_tokens"),
    (call("unary", job_id="j1", result=ANSWER + " The answer is 8."), "reference"),
    (call("image", job_id="j1", result="png 99 bytes", progress=[1, 2, 2, 3]), "progress"),
])
def test_repeated_or_garbled_text_is_duplicated(c: Call, why: str) -> None:
    outcome, reason = classify(c, [job()], ANSWER)
    assert outcome == "duplicated" and why in reason


def test_two_jobs_for_one_sdk_call_is_duplicated_even_when_the_result_is_fine() -> None:
    c = call(job_id="j1", result=ANSWER, streamed=ANSWER)
    outcome, why = classify(c, [job(), job(job_id="j2")], ANSWER)
    assert outcome == "duplicated" and "2 jobs" in why


@pytest.mark.parametrize("c, jobs, why", [
    (call(job_id="j1", hung=True), [job("JOB_STATE_RUNNING")], "grace"),  # never answered
    (call(job_id="j1", error="NOT_FOUND"), [], "gone"),  # the job vanished
    (call(error="UNAVAILABLE"), [job("JOB_STATE_QUEUED")], "still JOB_STATE_QUEUED"),  # gave up, job stuck
    (call(job_id="j1"), [job()], "without a result"),  # a stream that ended quietly without its result
    (call("unary", hung=True), [], "no job"),
])
def test_acknowledged_without_an_answer_is_lost(c: Call, jobs: list[JobView], why: str) -> None:
    outcome, reason = classify(c, jobs, ANSWER)
    assert outcome == "lost" and why in reason


def test_explicit_errors_are_counted_by_code_and_by_whether_a_job_exists() -> None:
    assert classify(call(job_id="j1", error="DEADLINE_EXCEEDED"), [job("JOB_STATE_FAILED")], ANSWER) == \
        ("error", "DEADLINE_EXCEEDED")
    assert classify(call("unary", error="ABORTED"), [job("JOB_STATE_FAILED")], ANSWER) == ("error", "ABORTED")
    assert classify(call("unary", error="UNAVAILABLE"), [], ANSWER) == ("not_acknowledged", "UNAVAILABLE")


def test_references_prefer_the_baseline_and_keep_slow_decoding_apart() -> None:
    prompt = "Tom has 5 apples..."
    calls = [call(phase="baseline", result="A"), call(phase="gateway", result="B"), call(phase="redis", result="B"),
             call(phase="gateway", result="C", slow=True), call(phase="redis", result="C", slow=True),
             call(phase="redis", result="E", slow=True), call(phase="gateway", prompt="other", result="D")]
    # The baseline's text, not the majority's; without a baseline, the majority's; one call alone: none.
    assert references(calls) == {(prompt, False): "A", (prompt, True): "C"}


def test_a_phase_fails_on_any_lost_or_duplicated_call_and_reports_it() -> None:
    calls = [call(n=0, job_id="a", result=ANSWER, end=1.5, outcome="done"),
             call(n=1, job_id="b", result=ANSWER, end=3.0, start=2.5, outcome="done"),
             call(n=2, job_id="c", error="DEADLINE_EXCEEDED", end=1.8, outcome="error", why="DEADLINE_EXCEEDED"),
             call(n=3, error="UNAVAILABLE", end=2.2, outcome="not_acknowledged", why="UNAVAILABLE"),
             call(n=4, job_id="e", hung=True, first_chunk=1.5, outcome="lost", why="still waiting",
                  job_state="JOB_STATE_RUNNING")]
    p = summarize(PhaseResult("gateway", "kill -9 gateway", fault_s=2.0), calls)
    assert (p.submitted, p.acknowledged, p.done, p.lost, p.duplicated) == (5, 4, 2, 1, 0)
    assert p.errors == {"DEADLINE_EXCEEDED": 1} and p.not_acknowledged == {"UNAVAILABLE": 1}
    assert p.recovery_s == pytest.approx(1.0)  # call 1, the first to start after the fault, took 0.5 s
    assert p.in_flight_at_fault == 2  # calls 3 and 4: the others ended before the fault or started after it
    assert p.mid_stream_at_fault == 1  # call 4 had its first chunk before the fault
    assert not p.passed and "#4" in p.problems[0]
    assert "FAIL" in table([p]) and "PASS" in table([summarize(PhaseResult("baseline", "none"), calls[:2])])


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="phase"):
        Options(phases=["baseline", "meteor"])
    with pytest.raises(ValueError):
        Options(duration_s=5, fault_at_s=5)
    with pytest.raises(ValueError, match="sabotage"):
        Options(sabotage="fire")
