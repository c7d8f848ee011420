"""End to end through the real parts: SDK -> gateway -> Redis -> dispatcher -> Ray Serve gRPC proxy
-> text worker -> the embedded D2F model -> back, streaming."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

import tessera
from lab.test_engine import well_formed
from lab.worlds import arith
from services.gateway.config import GatewayConfig
from services.queue.redis_server import RedisServer
from tests.integration.harness import KEY, running_gateway


@pytest.fixture(scope="module")
def gateway_address(redis_server: RedisServer, serve_cluster: Any) -> Iterator[str]:
    from ray import serve

    serve_cluster.deploy("text")  # the shipped Serve config's text app: the embedded D2F model
    try:
        cfg = GatewayConfig(port=0, metrics_port=0, redis_url=redis_server.url, key_prefix="e2e:")
        cfg.dispatcher.worker_address = f"127.0.0.1:{serve_cluster.grpc_port}"
        cfg.dispatcher.services = ["text"]
        with running_gateway(cfg) as address:
            yield address
    finally:
        serve.delete("text")


def test_stream_text_through_the_whole_stack(gateway_address: str) -> None:
    p = arith.problems("heldout", 1, seed=21)[0]
    with tessera.Client(gateway_address, api_key=KEY) as client:
        stream = client.stream_text(p.question, max_tokens=128)
        chunks = [c.text for c in stream]
        result = stream.result
    assert len(chunks) > 1  # text arrived in pieces, as it became final
    assert "".join(chunks) == result.text
    assert well_formed(p, result.text), result.text
    assert result.finish_reason == "stop" and result.usage.tokens_per_forward > 1.5
    assert result.model == "d2f-arith"


def test_async_client_jobs_and_bad_input(gateway_address: str) -> None:
    p = arith.problems("heldout", 1, seed=22)[0]

    async def go() -> None:
        async with tessera.AsyncClient(gateway_address, api_key=KEY) as client:
            job = await client.submit_text_job(p.question)
            events = [e async for e in client.watch_job(job.id)]
            assert events[-1].WhichOneof("kind") == "result"
            assert well_formed(p, events[-1].result.text.text)
            with pytest.raises(tessera.InvalidArgumentError) as ei:
                await client.generate_text("")
            assert any(f == "request.prompt" for f, _ in ei.value.field_violations)

    asyncio.run(go())


def test_cli_streams_the_answer(gateway_address: str) -> None:
    p = arith.problems("heldout", 1, seed=23)[0]
    out = subprocess.run([sys.executable, "-m", "tessera", "--address", gateway_address, "--api-key", KEY, "text",
                          p.question], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert well_formed(p, out.stdout), out.stdout
