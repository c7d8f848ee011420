"""The dispatcher's mapping of a queued job onto the worker's requests, without a worker: the stubs are
replaced by recorders, so what would go on the wire is read back."""

from __future__ import annotations

import asyncio
from typing import Any

from services.dispatcher.worker_client import WorkerClient
from tessera.v1 import jobs_pb2, text_pb2
from tessera.worker.v1 import worker_pb2


class _Recorder:
    """Stands in for a stub method: records the request, returns a call that is never read."""

    def __init__(self, response: Any = None) -> None:
        self.requests: list[Any] = []
        self.response = response

    def __call__(self, request: Any, **_: Any) -> Any:
        self.requests.append(request)
        if self.response is None:
            return None  # a streaming call: StartedCall only wraps it, nothing reads it here

        async def unary() -> Any:
            return self.response
        return unary()


class _TextStub:
    def __init__(self) -> None:
        self.GenerateText = _Recorder()
        self.CountTokens = _Recorder(worker_pb2.CountTokensResponse(prompt_tokens=5))


def _client() -> tuple[WorkerClient, _TextStub]:
    client = WorkerClient("127.0.0.1:1", "text")  # the channel connects lazily: never, here
    stub = _TextStub()
    client.text = stub  # type: ignore[assignment]
    return client, stub


def _queued(spec: jobs_pb2.JobSpec) -> text_pb2.TextRequest:
    """The text request as a dispatcher reads it back from the job store (serialized proto bytes)."""
    return jobs_pb2.JobSpec.FromString(spec.SerializeToString()).text


def test_a_queued_text_job_becomes_the_same_worker_request() -> None:
    async def go() -> None:
        client, stub = _client()
        for raw in (False, True):
            params = text_pb2.TextParams(max_tokens=12, temperature=0.5, top_p=0.9, seed=0, block_size=8,
                                         tau_conf=0.7, raw_prompt=raw)
            spec = jobs_pb2.JobSpec(text=text_pb2.TextRequest(model="m", prompt="Q: 1+1\nA:", params=params))
            client.start_generate("job-1", _queued(spec), skip_tokens=3, timeout=None)
        plain, raw_req = stub.GenerateText.requests
        assert (raw_req.job_id, raw_req.model, raw_req.prompt, raw_req.max_tokens, raw_req.block_size,
                raw_req.skip_tokens) == ("job-1", "m", "Q: 1+1\nA:", 12, 8, 3)
        assert raw_req.HasField("seed") and raw_req.seed == 0 and raw_req.HasField("tau_conf")
        assert not raw_req.HasField("tau_add")
        assert raw_req.raw_prompt and not plain.raw_prompt
        assert worker_pb2.GenerateTextRequest.FromString(raw_req.SerializeToString()).raw_prompt
        await client.close()
    asyncio.run(go())


def test_count_tokens_says_whether_the_prompt_is_raw() -> None:
    async def go() -> None:
        client, stub = _client()
        assert (await client.count_tokens("m", "a b", 1.0)).prompt_tokens == 5
        await client.count_tokens("m", "a b", 1.0, raw_prompt=True)
        plain, raw = stub.CountTokens.requests
        assert (plain.model, plain.prompt, plain.raw_prompt) == ("m", "a b", False)
        assert raw.raw_prompt
        await client.close()
    asyncio.run(go())
