"""The sync client against a real gRPC server: round trips, errors, retries, deadlines, auth."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest
from fake_gateway import API_KEY, CHUNKS, FakeGateway

import tessera


@pytest.fixture
def client(server: FakeGateway) -> Iterator[tessera.Client]:
    with tessera.Client(server.address, api_key=API_KEY) as c:
        yield c


def test_generate_round_trip_sends_params_auth_and_idempotency_key(client: tessera.Client,
                                                                    server: FakeGateway) -> None:
    res = client.generate_text("2+3?", model="d2f-arith", max_tokens=64, temperature=0.5, seed=7, tau_add=0.25,
                               raw_prompt=True)
    assert res.text == "".join(CHUNKS) and res.finish_reason == "stop" and res.model == "d2f-test"
    assert res.usage == tessera.Usage(7, 6, 4, 1.5, 0.25, 1.0, 0.125)
    (req,) = server.rec.requests
    assert res.job_id == f"job-{req.idempotency_key[:8]}" and len(req.idempotency_key) == 32
    assert res.request_id == server.rec.request_ids[0] == "req-1"
    p = req.request.params
    assert (req.request.model, p.max_tokens, p.temperature, p.seed, p.tau_add) == ("d2f-arith", 64, 0.5, 7, 0.25)
    assert not p.HasField("tau_conf") and p.raw_prompt
    (md,) = server.rec.metadata
    assert md["authorization"] == f"Bearer {API_KEY}" and md["user-agent"].startswith("tessera-python/")


def test_explicit_idempotency_key_is_sent(client: tessera.Client, server: FakeGateway) -> None:
    client.generate_text("x", idempotency_key="my-key-123")
    assert server.rec.requests[0].idempotency_key == "my-key-123"


def test_stream_yields_chunks_then_result(client: tessera.Client, server: FakeGateway) -> None:
    stream = client.stream_text("2+3?")
    assert stream.request_id == ""  # nothing received yet
    chunks = list(stream)
    assert [c.text for c in chunks] == list(CHUNKS)
    assert [c.total_tokens for c in chunks] == [2, 4, 6] and [c.event_id for c in chunks] == ["2-0", "3-0", "4-0"]
    assert stream.job_id.startswith("job-") and all(c.job_id == stream.job_id for c in chunks)
    assert stream.result is not None and stream.result.text == "".join(CHUNKS)
    assert stream.result.job_id == stream.job_id and stream.last_event_id == "6-0"
    assert stream.request_id == stream.result.request_id == server.rec.request_ids[0]


def test_stream_cancel_ends_iteration_quietly_and_cancels_the_rpc(client: tessera.Client,
                                                                  server: FakeGateway) -> None:
    start = time.monotonic()
    with client.stream_text("slowstream") as stream:
        texts = []
        for chunk in stream:
            texts.append(chunk.text)
            stream.cancel()
    assert texts == [CHUNKS[0]] and stream.result is None
    assert server.rec.stream_cancelled.wait(2) and time.monotonic() - start < 2


def test_cancel_from_another_thread_unblocks_the_reader(client: tessera.Client) -> None:
    stream = client.stream_text("slowstream")
    timer = threading.Timer(0.2, stream.cancel)
    timer.start()
    start = time.monotonic()
    assert [c.text for c in stream] == [CHUNKS[0]]  # ends quietly, no CancelledError
    assert time.monotonic() - start < 2
    timer.join()


def test_leaving_the_with_block_early_cancels_the_stream(client: tessera.Client, server: FakeGateway) -> None:
    with client.stream_text("slowstream") as stream:
        next(iter(stream))
    assert server.rec.stream_cancelled.wait(2)


def test_invalid_argument_carries_field_violations_and_request_id(client: tessera.Client,
                                                                 server: FakeGateway) -> None:
    with pytest.raises(tessera.InvalidArgumentError) as info:
        client.generate_text("bad")
    err = info.value
    assert err.code == grpc.StatusCode.INVALID_ARGUMENT and err.message == "invalid request"
    assert err.field_violations == [("request.params.temperature", "must be in [0, 10]"),
                                    ("request.prompt", "must not be 'bad'")]
    assert err.request_id == server.rec.request_ids[0] and err.reason == "INVALID_REQUEST"
    assert "request.params.temperature: must be in [0, 10]" in str(err) and "INVALID_ARGUMENT" in str(err)
    assert isinstance(err.__cause__, grpc.RpcError)
    assert sum(server.rec.attempts.values()) == 1  # not retried


def test_stream_errors_are_mapped(client: tessera.Client, server: FakeGateway) -> None:
    with pytest.raises(tessera.InvalidArgumentError) as info:
        list(client.stream_text("bad"))
    assert info.value.request_id == server.rec.request_ids[0]


def test_rate_limit_exposes_retry_delay(server: FakeGateway) -> None:
    with tessera.Client(server.address, api_key=API_KEY, retry_rate_limited=False) as client, \
            pytest.raises(tessera.ResourceExhaustedError) as info:
        client.generate_text("ratelimit")
    assert info.value.retry_delay_s == 1.5 and list(server.rec.attempts.values()) == [1]


def test_unavailable_is_retried_with_the_same_idempotency_key(client: tessera.Client, server: FakeGateway) -> None:
    assert client.generate_text("flaky:2").text == "".join(CHUNKS)
    assert list(server.rec.attempts.values()) == [3]  # 2 failures + 1 success, all with one key
    assert [c.text for c in client.stream_text("flaky:1")] == list(CHUNKS)
    assert list(server.rec.attempts.values())[1] == 2
    # Each SDK call sends one x-request-id of its own on all its attempts (the gateway logs them as one).
    sent = [md["x-request-id"] for md in server.rec.metadata]
    assert len(sent) == 5 and len(set(sent[:3])) == 1 and len(set(sent[3:])) == 1 and sent[0] != sent[3]


def test_slow_server_raises_deadline_exceeded(server: FakeGateway) -> None:
    with tessera.Client(server.address, api_key=API_KEY, timeout=0.2) as client:
        start = time.monotonic()
        with pytest.raises(tessera.DeadlineExceededError):
            client.generate_text("slow")
        with pytest.raises(tessera.DeadlineExceededError):
            client.generate_text("slow", timeout=0.1)  # per-call override
        assert time.monotonic() - start < 2
        assert client.generate_text("fast", timeout=5).text  # a generous override on the same client


def test_missing_or_wrong_api_key_is_unauthenticated(server: FakeGateway) -> None:
    for key in (None, "wrong"):
        with tessera.Client(server.address, api_key=key) as client, pytest.raises(tessera.UnauthenticatedError):
            client.generate_text("x")
    assert "authorization" not in server.rec.metadata[0]
    assert server.rec.metadata[1]["authorization"] == "Bearer wrong"


def test_unreachable_gateway_is_unavailable() -> None:
    with tessera.Client("127.0.0.1:1", timeout=5, retry_budget_s=0.3) as client:
        with pytest.raises(tessera.UnavailableError):
            client.generate_text("x")
        with pytest.raises(tessera.UnavailableError):
            list(client.stream_text("x"))
