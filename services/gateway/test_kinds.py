"""The gateway's per-kind rules against the job-kind registry: every kind is validated, and the
rules' claims about each kind's request hold."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from services.common.metrics import Metrics
from services.gateway.config import GatewayConfig
from services.gateway.dataplane import RULES, DataPlane
from services.gateway.rpc_errors import RpcError
from services.queue.kinds import JobKind
from tessera.v1 import jobs_pb2, text_pb2, understanding_pb2


def test_every_kind_has_gateway_validation() -> None:
    assert set(RULES) == set(JobKind), "a kind without rules would be refused (or enqueued unchecked)"


@pytest.mark.parametrize("kind", list(JobKind))
def test_rules_match_the_kinds_request(kind: JobKind) -> None:
    request = getattr(jobs_pb2.JobSpec(), kind).DESCRIPTOR
    assert "model" in request.fields_by_name
    params = request.fields_by_name.get("params")
    has_seed = params is not None and "seed" in params.message_type.fields_by_name
    assert RULES[kind].seeded == has_seed
    assert RULES[kind].models(GatewayConfig())  # a default model to fill in


def _plane() -> DataPlane:
    return DataPlane(GatewayConfig(), store=None, metrics=Metrics())  # type: ignore[arg-type]  # never reached


def test_an_empty_spec_is_refused_naming_the_kinds() -> None:
    with pytest.raises(RpcError) as ei:
        asyncio.run(_plane().submit("alice", jobs_pb2.JobSpec()))
    assert ei.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert ei.value.violations == [("spec", "one of [text, image, edit, understand] must be set")]


def test_prepare_fills_the_default_model_and_fixes_the_seed() -> None:
    plane = _plane()
    text = plane._prepare(JobKind.TEXT, JobKind.TEXT.spec(text_pb2.TextRequest(prompt="hi")), "request")
    assert text.text.model == GatewayConfig().text.models[0] and text.text.params.HasField("seed")
    with pytest.raises(RpcError):
        plane._prepare(JobKind.TEXT, JobKind.TEXT.spec(text_pb2.TextRequest(prompt=" ")), "request")
    ask = understanding_pb2.UnderstandingRequest(question="")
    with pytest.raises(RpcError):  # understanding rules run (an empty question and no image fail)
        plane._prepare(JobKind.UNDERSTAND, JobKind.UNDERSTAND.spec(ask), "request")
