"""JobService through the sync client: submit (idempotent), get, watch/resume, cancel, list pages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_gateway import API_KEY, CHUNKS, FakeGateway

import tessera
from tessera.v1 import jobs_pb2


@pytest.fixture
def client(server: FakeGateway) -> Iterator[tessera.Client]:
    with tessera.Client(server.address, api_key=API_KEY) as c:
        yield c


def test_submit_is_idempotent_and_get_returns_the_job(client: tessera.Client, server: FakeGateway) -> None:
    job = client.submit_text_job("2+3?", max_tokens=32, seed=1)
    assert job.state == jobs_pb2.JOB_STATE_QUEUED and len(job.idempotency_key) == 32
    assert job.spec.text.prompt == "2+3?" and job.spec.text.params.max_tokens == 32
    again = client.submit_text_job("2+3?", idempotency_key=job.idempotency_key)
    assert again.id == job.id and len(server.jobs.jobs) == 1
    assert client.get_job(job.id) == job


def test_unknown_job_is_not_found_with_resource_info(client: tessera.Client) -> None:
    with pytest.raises(tessera.NotFoundError) as info:
        client.get_job("nope")
    assert "nope" in str(info.value) and info.value.details[0].resource_name == "nope"


def test_watch_streams_events_and_resumes_after_an_event_id(client: tessera.Client) -> None:
    job = client.submit_text_job("x")
    events = list(client.watch_job(job.id))
    assert [e.event_id for e in events] == ["1", "2", "3", "4", "5", "6"]
    assert [e.WhichOneof("kind") for e in events] == ["state", "text_chunk", "text_chunk", "text_chunk", "result",
                                                      "state"]
    assert "".join(e.text_chunk.text for e in events) == "".join(CHUNKS)
    assert events[-1].state == jobs_pb2.JOB_STATE_SUCCEEDED
    resumed = list(client.watch_job(job.id, after_event_id="4"))
    assert [e.event_id for e in resumed] == ["5", "6"]
    with pytest.raises(tessera.NotFoundError):
        list(client.watch_job("nope"))


def test_cancel_and_list_pages(client: tessera.Client) -> None:
    ids = [client.submit_text_job(f"p{i}").id for i in range(3)]
    assert client.cancel_job(ids[0]).state == jobs_pb2.JOB_STATE_CANCELLED
    first, token = client.list_jobs(page_size=2)
    assert [j.id for j in first] == [ids[2], ids[1]] and token
    rest, token = client.list_jobs(page_size=2, page_token=token)
    assert [j.id for j in rest] == [ids[0]] and token == ""
    assert rest[0].state == jobs_pb2.JOB_STATE_CANCELLED
    result = tessera.text_result_from_job(rest[0])
    assert result is None
