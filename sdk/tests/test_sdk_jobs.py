"""JobService through the sync client: submit (idempotent), get, watch/resume, cancel, list pages."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fake_gateway import API_KEY, CHUNKS, MODELS, FakeGateway

import tessera
from tessera.v1 import jobs_pb2, text_pb2


@pytest.fixture
def client(server: FakeGateway) -> Iterator[tessera.Client]:
    with tessera.Client(server.address, api_key=API_KEY) as c:
        yield c


def test_submit_is_idempotent_and_get_returns_the_job(client: tessera.Client, server: FakeGateway) -> None:
    job = client.submit_text_job("2+3?", max_tokens=32, seed=1, raw_prompt=True)
    assert job.state == jobs_pb2.JOB_STATE_QUEUED and len(job.idempotency_key) == 32
    assert job.spec.text.prompt == "2+3?" and job.spec.text.params.max_tokens == 32
    assert job.spec.text.params.raw_prompt
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
    assert [e.event_id for e in events] == ["1-0", "2-0", "3-0", "4-0", "5-0", "6-0"]
    assert [e.WhichOneof("kind") for e in events] == ["state", "text_chunk", "text_chunk", "text_chunk", "state",
                                                      "result"]
    assert "".join(e.text_chunk.text for e in events) == "".join(CHUNKS)
    assert events[-2].state == jobs_pb2.JOB_STATE_SUCCEEDED and events[-1].result.text.text == "".join(CHUNKS)
    resumed = list(client.watch_job(job.id, after_event_id="4-0"))
    assert [e.event_id for e in resumed] == ["5-0", "6-0"]
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


def test_submit_jobs_of_every_kind(client: tessera.Client, server: FakeGateway) -> None:
    image = client.submit_image_job("a cat", width=32, seed=4, idempotency_key="k-image")
    assert (image.spec.image.prompt, image.spec.image.params.width, image.spec.image.params.seed) == ("a cat", 32, 4)
    edit = client.submit_edit_job(b"png-bytes", "make it red", guidance_scale=2.0)
    assert (edit.spec.edit.image, edit.spec.edit.params.guidance_scale) == (b"png-bytes", 2.0)
    ask = client.submit_understand_job(b"png-bytes", "what is it?", model="m", max_tokens=5)
    assert (ask.spec.understand.question, ask.spec.understand.model, ask.spec.understand.max_tokens) == (
        "what is it?", "m", 5)
    spec = jobs_pb2.JobSpec(text=text_pb2.TextRequest(prompt="raw"))
    assert client.submit_job(spec).spec == spec
    assert client.submit_image_job("a cat", idempotency_key="k-image").id == image.id  # same key, same job
    assert len(server.jobs.jobs) == 4


def test_list_models(client: tessera.Client) -> None:
    models = client.list_models()
    assert [m.name for m in models] == ["d2f-test", "shapes"]
    assert models[0] == tessera.ModelInfo("d2f-test", ("text",), True, True, "d2f", 2048, 512, 128, 1500, 6000)
    assert models[1].kinds == tuple(MODELS[1].kinds) and models[1].max_tokens == 0
