"""Retries against a real gRPC server: a gateway restart, the retry budget, rate limits, stream resume, request ids.

The restart tests take a server of their own down for DOWN_S (longer than gRPC's own retry policy used to
last, 1.75 s) and bring it back on the same port with its state, as a rolling gateway restart would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from fake_gateway import API_KEY, CHUNKS, RATE_LIMIT_DELAY_S, FakeGateway, RestartableGateway

import tessera
from tessera.v1 import jobs_pb2, text_pb2

DOWN_S = 3.0


@pytest.fixture
def client(server: FakeGateway) -> Iterator[tessera.Client]:
    with tessera.Client(server.address, api_key=API_KEY) as c:
        yield c


def _restart_when_a_call_arrives(gateway: RestartableGateway) -> threading.Thread:
    def run() -> None:
        assert gateway.rec.arrived.wait(10)
        gateway.restart(DOWN_S)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_unary_call_rides_out_a_gateway_restart(restartable: RestartableGateway) -> None:
    restarter = _restart_when_a_call_arrives(restartable)
    start = time.monotonic()
    with tessera.Client(restartable.address, api_key=API_KEY) as client:
        result = client.generate_text("hang:1")  # the first attempt hangs until the server goes down
    restarter.join()
    assert time.monotonic() - start >= DOWN_S  # it really waited for the replacement
    assert result.text == "".join(CHUNKS)
    first, second = restartable.rec.of_type(text_pb2.GenerateRequest)
    assert first.idempotency_key == second.idempotency_key  # so the gateway attaches to the same job
    assert result.request_id == restartable.rec.request_ids[-1]


def test_stream_resumes_after_a_gateway_restart_without_repeating_chunks(restartable: RestartableGateway) -> None:
    with tessera.Client(restartable.address, api_key=API_KEY) as client:
        stream = client.stream_text("slowstream")  # one chunk, then silence until the server goes down
        chunks = []
        for chunk in stream:
            chunks.append(chunk)
            if len(chunks) == 1:
                restartable.restart(DOWN_S)
    assert [c.text for c in chunks] == list(CHUNKS)
    assert [c.event_id for c in chunks] == ["2-0", "3-0", "4-0"]
    assert stream.result is not None and stream.result.text == "".join(CHUNKS)
    assert len(restartable.rec.of_type(text_pb2.GenerateStreamRequest)) == 1
    (watch,) = restartable.rec.of_type(jobs_pb2.WatchJobRequest)
    assert (watch.job_id, watch.after_event_id) == (stream.job_id, "2-0")
    assert stream.request_id == stream.result.request_id == restartable.rec.request_ids[-1]


def test_async_stream_failing_before_its_first_message_is_resent_with_its_key(
        restartable: RestartableGateway) -> None:
    restarter = _restart_when_a_call_arrives(restartable)

    async def main() -> list[str]:
        async with tessera.AsyncClient(restartable.address, api_key=API_KEY) as client:
            return [c.text async for c in client.stream_text("hang:1")]

    assert asyncio.run(main()) == list(CHUNKS)
    restarter.join()
    first, second = restartable.rec.of_type(text_pb2.GenerateStreamRequest)
    assert first.idempotency_key == second.idempotency_key
    assert not restartable.rec.of_type(jobs_pb2.WatchJobRequest)


def test_a_stream_failing_mid_way_resumes_through_watch_job(client: tessera.Client, server: FakeGateway) -> None:
    stream = client.stream_text("midstream")  # one chunk, then UNAVAILABLE; the job goes on
    assert [c.text for c in stream] == list(CHUNKS)
    assert stream.result is not None and stream.result.text == "".join(CHUNKS)
    (watch,) = server.rec.of_type(jobs_pb2.WatchJobRequest)
    assert (watch.job_id, watch.after_event_id) == (stream.job_id, "2-0")

    async def main() -> list[str]:
        async with tessera.AsyncClient(server.address, api_key=API_KEY) as aclient:
            astream = aclient.stream_text("midstream")
            texts = [c.text async for c in astream]
            assert astream.result is not None and astream.result.job_id == astream.job_id
            return texts

    assert asyncio.run(main()) == list(CHUNKS)


def test_cancelling_a_stream_that_is_waiting_to_retry_ends_it_quietly(client: tessera.Client,
                                                                    server: FakeGateway) -> None:
    stream = client.stream_text("flaky:1000")  # UNAVAILABLE before any message, for the whole 30 s budget
    timer = threading.Timer(0.5, stream.cancel)
    timer.start()
    start = time.monotonic()
    assert list(stream) == []
    assert time.monotonic() - start < 5
    timer.join()
    assert len(server.rec.attempts) == 1  # every attempt with the stream's one key


def test_the_budget_runs_out_into_unavailable(server: FakeGateway) -> None:
    with tessera.Client(server.address, api_key=API_KEY, retry_budget_s=1.0) as client:
        start = time.monotonic()
        with pytest.raises(tessera.UnavailableError) as info:
            client.generate_text("flaky:1000")
        assert time.monotonic() - start >= 1.0
    (attempts,) = server.rec.attempts.values()  # one key, however many attempts
    assert attempts > 2 and info.value.request_id == server.rec.request_ids[-1]


def test_retries_can_be_turned_off_and_never_outlast_the_deadline(server: FakeGateway) -> None:
    with tessera.Client(server.address, api_key=API_KEY, retry_budget_s=0) as client, \
            pytest.raises(tessera.UnavailableError):
        client.generate_text("flaky:1")
    assert list(server.rec.attempts.values()) == [1]
    with tessera.Client(server.address, api_key=API_KEY, timeout=0.5) as client:  # 30 s budget, 0.5 s deadline
        start = time.monotonic()
        with pytest.raises(tessera.UnavailableError):  # the real cause, not DEADLINE_EXCEEDED
            client.generate_text("flaky:1000")
        assert time.monotonic() - start < 5


def test_rate_limited_calls_are_retried_after_the_servers_delay(client: tessera.Client, server: FakeGateway) -> None:
    assert client.generate_text("ratelimit:1").text == "".join(CHUNKS)
    assert list(server.rec.attempts.values()) == [2]
    first, second = server.rec.arrivals
    assert second - first >= RATE_LIMIT_DELAY_S


def test_rate_limits_without_retry_info_opted_out_or_too_long_are_raised(server: FakeGateway) -> None:
    with tessera.Client(server.address, api_key=API_KEY, retry_rate_limited=False) as client, \
            pytest.raises(tessera.ResourceExhaustedError) as info:
        client.generate_text("ratelimit:1")
    assert info.value.retry_delay_s == RATE_LIMIT_DELAY_S
    with tessera.Client(server.address, api_key=API_KEY) as client:
        with pytest.raises(tessera.ResourceExhaustedError) as info:
            client.generate_text("quota")  # no RetryInfo: a retry would only be a guess
        assert info.value.retry_delay_s is None
        with pytest.raises(tessera.ResourceExhaustedError):
            client.generate_text("ratelimit", timeout=1)  # asks for 1.5 s: past the deadline
    assert list(server.rec.attempts.values()) == [1, 1, 1]


def test_request_ids_of_successes_and_errors(client: tessera.Client, server: FakeGateway) -> None:
    assert client.generate_text("x").request_id == server.rec.request_ids[-1]
    with pytest.raises(tessera.NotFoundError) as info:
        client.get_job("nope")
    assert info.value.request_id == server.rec.request_ids[-1]
    assert f"[request_id={server.rec.request_ids[-1]}]" in str(info.value)
    events = client.watch_job(client.submit_text_job("x").id)
    assert len(list(events)) == 6 and events.request_id == server.rec.request_ids[-1]
