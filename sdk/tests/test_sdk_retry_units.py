"""Unit tests of the retry decisions (a fake clock: no sleeping) and of stream resume bookkeeping."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

import tessera
from tessera._retry import Retrier, RetryPolicy
from tessera._streams import ImageStreamState, TextStreamState, WatchState
from tessera.errors import error_for_code, from_rpc_error
from tessera.v1 import images_pb2, jobs_pb2, text_pb2, understanding_pb2


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _retrier(clock: Clock, timeout: float = 600.0, rand: float = 1.0, **policy: object) -> Retrier:
    return Retrier(RetryPolicy(**policy), timeout, clock=clock, rand=lambda: rand)  # type: ignore[arg-type]


def _err(code: grpc.StatusCode, delay_s: float | None = None) -> tessera.TesseraError:
    details = [] if delay_s is None else [error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=int(delay_s), nanos=int(delay_s % 1 * 1e9)))]
    return error_for_code(code, "m", details)


UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unavailable_backs_off_exponentially_with_jitter_up_to_the_cap() -> None:
    clock = Clock()
    full = _retrier(clock, rand=1.0)
    assert [full.delay_after(_err(UNAVAILABLE)) for _ in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0]
    half = _retrier(clock, rand=0.0)  # the jitter never takes a delay below half its backoff
    assert [half.delay_after(_err(UNAVAILABLE)) for _ in range(3)] == [0.05, 0.1, 0.2]
    hinted = _retrier(clock)
    assert hinted.delay_after(_err(UNAVAILABLE, 0.7)) == 0.7  # the server's hint wins over the backoff


def test_the_budget_counts_from_the_first_failure_and_resets_on_progress() -> None:
    clock = Clock()
    r = _retrier(clock, budget_s=3.0)
    clock.now += 50  # a long, healthy call before the first failure does not use the budget up
    assert r.delay_after(_err(UNAVAILABLE)) == 0.1
    clock.now += 2.9
    assert r.delay_after(_err(UNAVAILABLE)) == pytest.approx(0.1)  # capped: the last attempt lands on the budget
    clock.now += 0.1
    assert r.delay_after(_err(UNAVAILABLE)) is None
    r.progressed()  # a stream received messages again: a fresh budget and backoff
    assert r.delay_after(_err(UNAVAILABLE)) == 0.1
    assert _retrier(clock, budget_s=0).delay_after(_err(UNAVAILABLE)) is None
    with pytest.raises(ValueError):
        RetryPolicy(budget_s=-1)


def test_no_attempt_starts_after_the_deadline() -> None:
    clock = Clock()
    r = _retrier(clock, timeout=1.0)
    assert r.timeout() == 1.0
    clock.now += 0.95
    assert r.timeout() == pytest.approx(0.05)
    assert r.delay_after(_err(UNAVAILABLE)) is None  # 0.1 s of backoff would pass the deadline
    assert _retrier(clock, timeout=1.0).delay_after(_err(EXHAUSTED, 2.0)) is None


def test_resource_exhausted_waits_for_retry_info_only() -> None:
    clock = Clock()
    assert _retrier(clock).delay_after(_err(EXHAUSTED, 1.5)) == 1.5
    assert _retrier(clock).delay_after(_err(EXHAUSTED)) is None  # no hint: not retried
    assert _retrier(clock, rate_limited=False).delay_after(_err(EXHAUSTED, 1.5)) is None
    assert _retrier(clock, budget_s=1.0).delay_after(_err(EXHAUSTED, 1.5)) is None  # would only be refused again
    for code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.INTERNAL):
        assert _retrier(clock).delay_after(_err(code, 0.1)) is None


def test_text_stream_resumes_after_the_last_payload_from_watch_job_events() -> None:
    state = TextStreamState()
    assert state.resume_request() is None  # nothing received: re-send the original request
    state.feed(text_pb2.GenerateStreamResponse(job_id="j", event_id="1-0"))
    # The announcement's event id may also be the first chunk's: resuming after it could lose that chunk.
    assert state.resume_request() == jobs_pb2.WatchJobRequest(job_id="j", after_event_id="")
    state.feed(text_pb2.GenerateStreamResponse(job_id="j", event_id="1-0", chunk=text_pb2.TextChunk(text="a")))
    assert state.resume_request() == jobs_pb2.WatchJobRequest(job_id="j", after_event_id="1-0")
    state.request_id = "req-9"
    events = [jobs_pb2.JobEvent(event_id="2-0", state=jobs_pb2.JOB_STATE_RUNNING),
              jobs_pb2.JobEvent(event_id="3-0", text_chunk=text_pb2.TextChunk(text="b", total_tokens=2)),
              jobs_pb2.JobEvent(event_id="4-0", result=jobs_pb2.JobResult(text=text_pb2.TextResult(text="ab")))]
    items = [state.feed(jobs_pb2.WatchJobResponse(job_id="j", event=e)) for e in events]
    assert items == [None, tessera.TextChunk("b", 0, 2, "j", "3-0"), None]
    assert state.finished and state.result is not None and state.result.text == "ab"
    assert (state.result.job_id, state.result.request_id, state.last_event_id) == ("j", "req-9", "4-0")


def test_resumed_understanding_and_image_streams_read_their_result_kinds() -> None:
    answer = understanding_pb2.UnderstandingResult(text="a square")
    state = TextStreamState()
    state.feed(jobs_pb2.WatchJobResponse(job_id="u", event=jobs_pb2.JobEvent(
        event_id="5-0", result=jobs_pb2.JobResult(understand=answer))))
    assert state.result is not None and state.result.text == "a square"
    image = ImageStreamState()
    progress = image.feed(jobs_pb2.WatchJobResponse(job_id="i", event=jobs_pb2.JobEvent(
        event_id="2-0", image_progress=images_pb2.ImageProgress(patches_done=1, patches_total=4))))
    assert progress == tessera.ImageProgress(1, 4, b"", "i", "2-0")
    image.feed(jobs_pb2.WatchJobResponse(job_id="i", event=jobs_pb2.JobEvent(
        event_id="3-0", result=jobs_pb2.JobResult(image=images_pb2.ImageResult(png=b"png", width=8)))))
    assert image.result is not None and (image.result.png, image.result.width, image.result.job_id) == (b"png", 8, "i")


def test_a_job_error_during_a_resumed_stream_raises_like_the_original_would() -> None:
    state = TextStreamState()
    state.request_id = "req-3"
    failed = jobs_pb2.JobEvent(event_id="2-0", error=status_pb2.Status(code=code_pb2.INTERNAL, message="boom"))
    with pytest.raises(tessera.InternalError) as info:
        state.feed(jobs_pb2.WatchJobResponse(job_id="j", event=failed))
    assert info.value.message == "boom" and info.value.request_id == "req-3" and state.finished


def test_watch_state_passes_every_event_through() -> None:
    state = WatchState()
    failed = jobs_pb2.JobEvent(event_id="7-0", error=status_pb2.Status(code=code_pb2.CANCELLED))
    assert state.feed(jobs_pb2.WatchJobResponse(job_id="j", event=failed)) == failed  # the job's error, not ours
    assert state.finished and state.resume_request() == jobs_pb2.WatchJobRequest(job_id="j", after_event_id="7-0")


class _FakeRpcError(grpc.RpcError):
    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return "down"

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()  # e.g. a proxy that dropped the trailers

    def initial_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-request-id", "req-initial"),)


def test_an_error_without_the_trailer_takes_the_request_id_from_the_initial_metadata() -> None:
    err = from_rpc_error(_FakeRpcError())
    assert isinstance(err, tessera.UnavailableError) and err.request_id == "req-initial"
