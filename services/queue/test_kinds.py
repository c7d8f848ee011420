"""The job-kind registry against the protocol, and the queue's place on the data path."""

from __future__ import annotations

import ast
from pathlib import Path

from services.queue.kinds import JobKind, Service
from tessera.v1 import jobs_pb2, text_pb2

HERE = Path(__file__).resolve().parent


def _oneof_fields(message: type) -> set[str]:
    return {f.name for f in message.DESCRIPTOR.oneofs_by_name["kind"].fields}


def test_every_job_spec_kind_is_registered_and_nothing_else() -> None:
    # A kind added to the proto but not here would be refused by the gateway; one here but not in
    # the proto could never be submitted.
    assert {k.value for k in JobKind} == _oneof_fields(jobs_pb2.JobSpec)


def test_each_kind_names_a_result_field_and_every_service_runs_some_kind() -> None:
    results = _oneof_fields(jobs_pb2.JobResult)
    for kind in JobKind:
        assert kind.result_field in results, kind
        assert isinstance(kind.service, Service)
    assert {k.service for k in JobKind} == set(Service)  # a service no kind runs would be a dead queue


def test_kinds_read_and_build_specs() -> None:
    spec = JobKind.TEXT.spec(text_pb2.TextRequest(prompt="hi"))
    assert spec.WhichOneof("kind") == "text" and JobKind.of(spec) is JobKind.TEXT
    assert JobKind.of(jobs_pb2.JobSpec()) is None
    assert JobKind.named("edit") is JobKind.EDIT and JobKind.named("video") is None and JobKind.named(None) is None
    assert JobKind.EDIT.service is Service.IMAGE and f"{JobKind.UNDERSTAND.service}" == "understanding"


def test_the_queue_imports_neither_the_gateway_nor_the_dispatcher() -> None:
    # Data path: gateway -> queue -> dispatcher. The queue sits below both and knows neither.
    offenders = []
    for path in sorted(HERE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names
                          if n.startswith(("services.gateway", "services.dispatcher"))]
    assert not offenders, offenders
