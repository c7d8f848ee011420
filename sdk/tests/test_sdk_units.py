"""Pure unit tests of request building, channel configuration, conversions and error formatting."""

from __future__ import annotations

import dataclasses
import pickle

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2, timestamp_pb2
from google.rpc import error_details_pb2, status_pb2

import tessera
from tessera import _common
from tessera._streams import TextStreamState
from tessera.errors import error_for_code, from_status, request_id_from
from tessera.types import finish_reason_name, text_result_from_job
from tessera.v1 import common_pb2, jobs_pb2, models_pb2, text_pb2


def test_text_request_leaves_optional_params_unset_unless_given() -> None:
    req = _common.text_request("hi", model="m", max_tokens=5, seed=0, tau_conf=0.9)
    assert (req.prompt, req.model, req.params.max_tokens) == ("hi", "m", 5)
    assert req.params.HasField("seed") and req.params.seed == 0  # 0 is a real seed, not "default"
    assert req.params.HasField("tau_conf") and not req.params.HasField("tau_add")
    assert not req.params.HasField("tau_act")
    assert not req.params.raw_prompt  # the model's prompt format unless asked
    assert _common.text_request("<s>Q: hi\nA:", raw_prompt=True).params.raw_prompt


def test_text_request_rejects_unknown_params() -> None:
    with pytest.raises(TypeError):
        _common.text_request("hi", temprature=0.5)  # type: ignore[call-arg]


def test_submissions_always_carry_an_idempotency_key() -> None:
    a = _common.generate_request("p", None, {})
    b = _common.stream_request("p", None, {})
    c = _common.submit_request(_common.text_spec("p", {"max_tokens": 3}), None)
    keys = {a.idempotency_key, b.idempotency_key, c.idempotency_key}
    assert len(keys) == 3 and all(len(k) == 32 for k in keys)
    assert c.spec.text.params.max_tokens == 3
    assert _common.generate_request("p", "mine", {}).idempotency_key == "mine"


def test_job_specs_of_every_kind() -> None:
    assert _common.text_spec("p", {"seed": 0}).text.params.HasField("seed")
    assert _common.text_spec("p", {"raw_prompt": True}).text.params.raw_prompt
    image = _common.image_spec("a cat", {"model": "m", "width": 64, "seed": 3}).image
    assert (image.model, image.prompt, image.params.width, image.params.seed) == ("m", "a cat", 64, 3)
    edit = _common.edit_spec(b"png", "make it red", {"image_guidance_scale": 1.5}).edit
    assert (edit.image, edit.instruction, edit.params.image_guidance_scale) == (b"png", "make it red", 1.5)
    ask = _common.understand_spec(b"png", "what?", model="m", max_tokens=9).understand
    assert (ask.image, ask.question, ask.model, ask.max_tokens) == (b"png", "what?", "m", 9)


def test_channel_leaves_retries_to_the_sdk_and_reconnects_within_seconds() -> None:
    opts = dict(_common.channel_options("ua"))
    assert "grpc.service_config" not in opts  # no gRPC retry policy: it would multiply the SDK's attempts
    assert opts["grpc.max_receive_message_length"] == opts["grpc.max_send_message_length"] == 64 * 1024 * 1024
    assert int(opts["grpc.max_reconnect_backoff_ms"]) <= 5_000


def test_model_info_mirrors_the_proto_field_for_field() -> None:
    # The CLI prints ModelInfo under the proto's field names: a field added to the proto must be added here.
    assert [f.name for f in dataclasses.fields(tessera.ModelInfo)] == [
        f.name for f in models_pb2.ModelInfo.DESCRIPTOR.fields]


def test_request_id_prefers_the_first_metadata_that_has_one() -> None:
    assert request_id_from(None, (("x-request-id", b"r2"),)) == "r2"
    assert request_id_from((("x-request-id", "r1"),), (("x-request-id", "r2"),)) == "r1"
    assert request_id_from((("other", "x"),), None) == ""


def test_timeouts_and_metadata() -> None:
    cfg = _common.ClientConfig()
    assert (cfg.unary_timeout(None), cfg.stream_timeout(None)) == (120.0, 600.0)
    (key, rid), = cfg.call_metadata()  # no key: only a fresh request id
    assert cfg.unary_timeout(3) == 3.0 and key == "x-request-id" and len(rid) == 32
    assert cfg.call_metadata() != cfg.call_metadata()  # one per SDK call
    cfg = _common.ClientConfig(api_key="k", timeout=9, metadata=(("x-trace", "t"),))
    assert (cfg.unary_timeout(None), cfg.stream_timeout(None), cfg.stream_timeout(2)) == (9.0, 9.0, 2.0)
    assert cfg.call_metadata()[:2] == (("authorization", "Bearer k"), ("x-trace", "t"))
    assert _common.ClientConfig(metadata=(("x-request-id", "mine-12345"),)).call_metadata() == (
        ("x-request-id", "mine-12345"),)  # the user's own id is kept
    with pytest.raises(ValueError):
        cfg.unary_timeout(0)
    assert not cfg.use_tls and cfg.credentials() is None
    assert _common.ClientConfig(root_certificates=b"pem").use_tls


def test_stream_state_tracks_job_chunks_and_result() -> None:
    state = TextStreamState()
    assert state.feed(text_pb2.GenerateStreamResponse(job_id="j", event_id="1")) is None
    chunk = state.feed(text_pb2.GenerateStreamResponse(job_id="j", event_id="2", chunk=text_pb2.TextChunk(text="a")))
    assert chunk == tessera.TextChunk("a", 0, 0, "j", "2")
    res = text_pb2.TextResult(text="a", finish_reason=common_pb2.FINISH_REASON_LENGTH)
    assert state.feed(text_pb2.GenerateStreamResponse(job_id="j", event_id="3", result=res)) is None
    assert state.result is not None and state.result.finish_reason == "length"
    assert (state.job_id, state.last_event_id) == ("j", "3")


def test_finish_reason_names_and_job_results() -> None:
    assert [finish_reason_name(v) for v in (0, 1, 2, 3, 99)] == ["unspecified", "stop", "length", "cancelled",
                                                                 "unspecified"]
    job = jobs_pb2.Job(id="j1")
    assert text_result_from_job(job) is None
    job.result.text.CopyFrom(text_pb2.TextResult(text="ok", usage=text_pb2.TextUsage(tokens_per_forward=2.3)))
    res = text_result_from_job(job)
    assert res is not None and res.text == "ok" and res.job_id == "j1" and res.usage.tokens_per_forward == 2.3


def _status(code: int, message: str, *details: object) -> status_pb2.Status:
    status = status_pb2.Status(code=code, message=message)
    for d in details:
        status.details.add().Pack(d)  # type: ignore[arg-type]
    return status


def test_error_str_and_structured_fields() -> None:
    bad = error_details_pb2.BadRequest(field_violations=[{"field": "request.prompt", "description": "empty"}])
    err = from_status(_status(3, "invalid request", bad, error_details_pb2.RetryInfo(
        retry_delay=duration_pb2.Duration(seconds=1, nanos=500_000_000))), request_id="r1")
    assert isinstance(err, tessera.InvalidArgumentError) and err.code == grpc.StatusCode.INVALID_ARGUMENT
    assert err.field_violations == [("request.prompt", "empty")] and err.retry_delay_s == 1.5
    assert str(err) == "INVALID_ARGUMENT: invalid request (request.prompt: empty) [request_id=r1]"
    # The gateway may already spell the violation out in its message: it is not repeated.
    assert str(from_status(_status(3, "invalid: request.prompt: empty", bad))) == \
        "INVALID_ARGUMENT: invalid: request.prompt: empty"
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is type(err) and str(again) == str(err)


def test_unknown_details_and_codes_are_kept() -> None:
    foreign = any_pb2.Any()
    foreign.Pack(timestamp_pb2.Timestamp(seconds=5))
    status = _status(10, "aborted")
    status.details.append(foreign)
    err = from_status(status)
    assert type(err) is tessera.TesseraError and err.code == grpc.StatusCode.ABORTED
    assert err.details == [foreign] and err.retry_delay_s is None and err.reason == ""
    assert type(from_status(_status(999, "?"))) is tessera.InternalError  # unknown code -> UNKNOWN


@pytest.mark.parametrize(("code", "cls"), [
    (grpc.StatusCode.UNAUTHENTICATED, tessera.UnauthenticatedError),
    (grpc.StatusCode.PERMISSION_DENIED, tessera.PermissionDeniedError),
    (grpc.StatusCode.NOT_FOUND, tessera.NotFoundError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, tessera.ResourceExhaustedError),
    (grpc.StatusCode.UNAVAILABLE, tessera.UnavailableError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, tessera.DeadlineExceededError),
    (grpc.StatusCode.CANCELLED, tessera.CancelledError),
    (grpc.StatusCode.FAILED_PRECONDITION, tessera.FailedPreconditionError),
    (grpc.StatusCode.INTERNAL, tessera.InternalError),
])
def test_each_code_has_its_subclass(code: grpc.StatusCode, cls: type[tessera.TesseraError]) -> None:
    err = error_for_code(code, "m")
    assert type(err) is cls and str(err) == f"{code.name}: m"
