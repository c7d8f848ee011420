"""The asyncio client against a real gRPC server (plain asyncio.run: no async test plugin needed)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from fake_gateway import API_KEY, CHUNKS, FakeGateway

import tessera
from tessera.v1 import jobs_pb2


def run(server: FakeGateway, body: Callable[[tessera.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with tessera.AsyncClient(server.address, api_key=API_KEY) as client:
            await body(client)

    asyncio.run(main())


def test_generate_and_stream(server: FakeGateway) -> None:
    async def body(client: tessera.AsyncClient) -> None:
        res = await client.generate_text("2+3?", max_tokens=8, tau_conf=0.75)
        assert res.text == "".join(CHUNKS) and res.usage.completion_tokens == 6
        stream = client.stream_text("2+3?", raw_prompt=True)
        chunks = [c async for c in stream]
        assert [c.text for c in chunks] == list(CHUNKS)
        assert stream.result is not None and stream.result.job_id == stream.job_id == chunks[0].job_id

    run(server, body)
    gen, streamed = server.rec.requests
    assert gen.request.params.tau_conf == 0.75 and gen.idempotency_key and streamed.idempotency_key
    assert not gen.request.params.raw_prompt and streamed.request.params.raw_prompt
    assert gen.idempotency_key != streamed.idempotency_key
    assert all(md["authorization"] == f"Bearer {API_KEY}" for md in server.rec.metadata)


def test_errors_are_mapped_including_mid_stream(server: FakeGateway) -> None:
    async def body(client: tessera.AsyncClient) -> None:
        with pytest.raises(tessera.InvalidArgumentError) as info:
            await client.generate_text("bad")
        assert ("request.prompt", "must not be 'bad'") in info.value.field_violations
        assert info.value.request_id == server.rec.request_ids[-1]
        with pytest.raises(tessera.InvalidArgumentError) as info:
            async for _ in client.stream_text("bad"):
                pass
        assert info.value.request_id == server.rec.request_ids[-1]
        with pytest.raises(tessera.UnauthenticatedError):
            async with tessera.AsyncClient(server.address) as anonymous:
                await anonymous.get_job("x")

    run(server, body)


def test_retry_and_deadline(server: FakeGateway) -> None:
    async def body(client: tessera.AsyncClient) -> None:
        assert (await client.generate_text("flaky:2")).text == "".join(CHUNKS)
        start = time.monotonic()
        with pytest.raises(tessera.DeadlineExceededError):
            await client.generate_text("slow", timeout=0.2)
        with pytest.raises(tessera.DeadlineExceededError):
            async for _ in client.stream_text("slowstream", timeout=0.3):
                pass
        assert time.monotonic() - start < 2

    run(server, body)
    assert next(iter(server.rec.attempts.values())) == 3  # "flaky:2": 2 failures + 1 success


def test_cancel_stream_quietly_but_task_cancellation_propagates(server: FakeGateway) -> None:
    async def body(client: tessera.AsyncClient) -> None:
        async with client.stream_text("slowstream") as stream:
            texts = [c.text async for c in _cancel_after_first(stream)]
        assert texts == [CHUNKS[0]] and stream.result is None

        stream = client.stream_text("slowstream")
        asyncio.get_running_loop().call_later(0.2, stream.cancel)  # cancel while a read is pending
        assert [c.text async for c in stream] == [CHUNKS[0]]

        async def consume() -> None:
            async for _ in client.stream_text("slowstream"):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

        # Both at once (e.g. a `with` block closing the stream during shutdown): the task's wins.
        stream = client.stream_text("slowstream")
        task = asyncio.create_task(_drain(stream))
        await asyncio.sleep(0.1)
        stream.cancel()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(server, body)
    assert server.rec.stream_cancelled.wait(2)


async def _drain(stream: tessera.AsyncTextStream) -> None:
    async for _ in stream:
        pass


async def _cancel_after_first(stream: tessera.AsyncTextStream) -> AsyncIterator[tessera.TextChunk]:
    async for chunk in stream:
        yield chunk
        stream.cancel()


def test_jobs_round_trip(server: FakeGateway) -> None:
    async def body(client: tessera.AsyncClient) -> None:
        job = await client.submit_text_job("x", idempotency_key="k1")
        assert (await client.submit_text_job("x", idempotency_key="k1")).id == job.id
        assert (await client.get_job(job.id)).spec.text.prompt == "x"
        events = [e async for e in client.watch_job(job.id, after_event_id="3-0")]
        assert [e.event_id for e in events] == ["4-0", "5-0", "6-0"]
        assert (await client.cancel_job(job.id)).state == jobs_pb2.JOB_STATE_CANCELLED
        jobs, token = await client.list_jobs()
        assert [j.id for j in jobs] == [job.id] and token == ""
        with pytest.raises(tessera.NotFoundError):
            await client.get_job("nope")

    run(server, body)


def test_models_and_job_kinds(server: FakeGateway) -> None:
    async def body(client: tessera.AsyncClient) -> None:
        assert [m.name for m in await client.list_models()] == ["d2f-test", "shapes"]
        image = await client.submit_image_job("a cat", height=16)
        edit = await client.submit_edit_job(b"png", "make it red", image_guidance_scale=1.25)
        ask = await client.submit_understand_job(b"png", "what?", max_tokens=3)
        assert (image.spec.image.params.height, edit.spec.edit.params.image_guidance_scale) == (16, 1.25)
        assert ask.spec.understand.max_tokens == 3 and len({image.id, edit.id, ask.id}) == 3

    run(server, body)
    assert all(r.idempotency_key for r in server.rec.of_type(jobs_pb2.SubmitJobRequest))
