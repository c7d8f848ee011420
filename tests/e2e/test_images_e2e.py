"""Images end to end through the real parts: SDK -> gateway -> Redis -> dispatcher -> Ray Serve gRPC
proxy -> image / understanding workers -> tiny Orthus -> PNG (or streamed answer) back."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from PIL import Image

import tessera
from lab.training.images.tiny import NATIVE, PATCHES
from services.common.images import encode_png
from services.gateway.config import GatewayConfig, ImageLimits
from services.queue.redis_server import RedisServer
from tessera.v1 import jobs_pb2
from tests.integration.harness import KEY, running_gateway

PREFIX = "e2e-img:"


@pytest.fixture(scope="module")
def gateway_address(redis_server: RedisServer, serve_cluster: Any, image_checkpoints: Path) -> Iterator[str]:
    from ray import serve

    orthus = str(image_checkpoints / "shapes-orthus")
    deployment = {"max_ongoing_requests": 8, "ray_actor_options": {"num_cpus": 1}}
    serve_cluster.deploy("image", {"model": {"name": "tiny", "backend": "orthus", "model_dir": orthus, "steps": 3},
                                   "batching": {"max_wait_ms": 20}}, deployment)
    serve_cluster.deploy("understanding", {"model": {"name": "tiny", "model_dir": orthus}}, deployment)
    try:
        cfg = GatewayConfig(port=0, metrics_port=0, redis_url=redis_server.url, key_prefix=PREFIX,
                            images=ImageLimits(max_image_bytes=20_000, max_side=256, models=["tiny"]))
        cfg.understanding.models = ["tiny"]
        cfg.dispatcher.worker_address = f"127.0.0.1:{serve_cluster.grpc_port}"
        with running_gateway(cfg) as address:
            yield address
    finally:
        serve.delete("image")
        serve.delete("understanding")


def scene_png(size: int = 48) -> bytes:
    img = np.full((size, size, 3), 255, dtype=np.uint8)
    img[8:24, 8:24] = (220, 20, 20)  # a red square
    return encode_png(img)


def test_generate_image_streams_ordered_progress_then_a_png(gateway_address: str) -> None:
    seen: list[tessera.ImageProgress] = []
    with tessera.Client(gateway_address, api_key=KEY) as client:
        result = client.generate_image("a red circle left of a blue square", width=96, height=64, seed=3,
                                       on_progress=seen.append)
        job = client.get_job(result.job_id)
    assert [(p.patches_done, p.patches_total) for p in seen] == [(k, PATCHES) for k in range(1, PATCHES + 1)]
    assert all(p.job_id == result.job_id for p in seen)
    img = Image.open(io.BytesIO(result.png))
    assert img.format == "PNG" and img.size == (96, 64) == (result.width, result.height)
    assert result.model == "tiny" and result.seed == 3 and result.usage.patches == PATCHES and result.usage.steps == 3
    assert job.state == jobs_pb2.JOB_STATE_SUCCEEDED
    assert job.progress == 1.0 and job.result.image.png == result.png


def test_edit_and_understand_sync_and_async(gateway_address: str, tmp_path: Path) -> None:
    src = tmp_path / "in.png"
    src.write_bytes(scene_png())
    with tessera.Client(gateway_address, api_key=KEY) as client:
        edited = client.edit_image(src, "make the square green", preview=True)
        assert Image.open(io.BytesIO(edited.png)).size == (NATIVE, NATIVE)  # the model's native resolution
        stream = client.understand(src, "what colour is the square?", max_tokens=5)
        chunks = list(stream)
        answer = stream.result
    assert answer is not None and answer.text == "".join(c.text for c in chunks)
    assert answer.usage.completion_tokens == sum(c.token_count for c in chunks) <= 5
    assert answer.finish_reason in ("stop", "length") and answer.model == "tiny"

    async def go() -> None:
        async with tessera.AsyncClient(gateway_address, api_key=KEY) as client:
            results = await asyncio.gather(*(client.generate_image(f"{n} blue squares", seed=n) for n in range(3)))
            assert all(Image.open(io.BytesIO(r.png)).size == (NATIVE, NATIVE) for r in results)
            stream = client.understand(scene_png(), "how many shapes are there?", max_tokens=3)
            texts = [c.text async for c in stream]
            assert stream.result is not None and stream.result.text == "".join(texts)

    asyncio.run(go())


def test_cli_image_writes_the_png_with_a_progress_bar(gateway_address: str, tmp_path: Path) -> None:
    out = tmp_path / "out.png"
    run = subprocess.run([sys.executable, "-m", "tessera", "--address", gateway_address, "--api-key", KEY, "image",
                          "a red circle", "--size", "64", "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert f"{PATCHES}/{PATCHES} patches" in run.stderr and f"wrote {out}" in run.stderr
    assert Image.open(out).size == (64, 64)
    ask = subprocess.run([sys.executable, "-m", "tessera", "--address", gateway_address, "--api-key", KEY, "ask",
                          str(out), "what colour is the circle?"], capture_output=True, text=True, timeout=120)
    assert ask.returncode == 0, ask.stderr
    assert "tokens" in ask.stderr


@pytest.mark.parametrize("call,field,message", [
    ("edit_too_large", "request.image", "bytes; the limit is 20000"),
    ("edit_not_an_image", "request.image", "not a decodable"),
    ("edit_bad_dimensions", "request.image", "each side must be in [8, 256]"),
    ("empty_prompt", "request.prompt", "must not be empty"),
    ("ask_not_an_image", "request.image", "not a decodable"),
])
def test_bad_input_is_invalid_argument_and_nothing_is_enqueued(gateway_address: str, redis_server: RedisServer,
                                                               call: str, field: str, message: str) -> None:
    big = np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)  # noise: PNG can't shrink it
    calls = {
        "edit_too_large": lambda c: c.edit_image(encode_png(big), "make it green"),
        "edit_not_an_image": lambda c: c.edit_image(b"%PDF-1.4 definitely not a picture", "make it green"),
        "edit_bad_dimensions": lambda c: c.edit_image(scene_png(300), "make it green"),
        "empty_prompt": lambda c: c.generate_image("   "),
        "ask_not_an_image": lambda c: list(c.understand(b"GIF89a....", "what is it?")),
    }
    r = redis.Redis.from_url(redis_server.url)
    before = {q: r.xlen(f"{PREFIX}queue:{q}") + r.xlen(f"{PREFIX}dlq:{q}") for q in ("image", "understanding")}
    jobs_before = r.zcard(f"{PREFIX}owner:alice")
    with tessera.Client(gateway_address, api_key=KEY) as client, pytest.raises(tessera.InvalidArgumentError) as ei:
        calls[call](client)
    violations = dict(ei.value.field_violations)
    assert message in violations[field], violations
    after = {q: r.xlen(f"{PREFIX}queue:{q}") + r.xlen(f"{PREFIX}dlq:{q}") for q in ("image", "understanding")}
    assert after == before and r.zcard(f"{PREFIX}owner:alice") == jobs_before  # nothing enqueued, no job
