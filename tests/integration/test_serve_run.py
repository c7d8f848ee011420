"""`serve run services/workers/serve_config.yaml`, Ray's own CLI, starts all three worker apps from the
one file on the committed checkpoints, and each answers its RPC through Serve's gRPC proxy; an RPC of
another family answers UNIMPLEMENTED with the reason.

The copy the test runs differs from the shipped file only in its ports (free ones) and in CPU
reservations: `serve run` starts a Ray with this machine's CPUs, and three 1-CPU replicas do not fit on
a 2-core box (`make run` starts Ray with 4 logical CPUs for the same reason).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml
from PIL import Image

from services.queue.redis_server import free_port
from services.workers import serve_config
from services.workers.config import REPO_ROOT
from services.workers.protocol import WORKER_TOKEN_METADATA, token_metadata
from tessera.worker.v1 import worker_pb2_grpc
from tessera.worker.v1.worker_pb2 import (
    CancelCallRequest,
    CountTokensRequest,
    DescribeTextRequest,
    GenerateImageRequest,
    GenerateTextRequest,
    ImageSampling,
    UnderstandRequest,
)

SERVE = Path(sys.executable).with_name("serve")


def md(app: str) -> tuple[tuple[str, str]]:
    return (("application", app), *token_metadata())


HTTP_PORT = free_port()


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[grpc.Channel]:
    data = serve_config.read()
    grpc_port = free_port()
    data["grpc_options"]["port"], data["http_options"]["port"] = grpc_port, HTTP_PORT
    for app in data["applications"]:
        for d in app["deployments"]:
            d["ray_actor_options"]["num_cpus"] = 0.5
    path = tmp_path_factory.mktemp("serve") / "serve_config.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # a cluster of its own
    log = (path.parent / "serve.log").open("w")
    proc = subprocess.Popen([str(SERVE), "run", str(path)], cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    channel = grpc.insecure_channel(f"127.0.0.1:{grpc_port}")
    try:
        text = worker_pb2_grpc.TextWorkerServiceStub(channel)
        deadline = time.monotonic() + 300
        while True:  # the apps come up one by one; the last to answer is the slowest to load
            try:
                text.DescribeText(DescribeTextRequest(), metadata=md("text"), timeout=5)
                images = worker_pb2_grpc.ImageWorkerServiceStub(channel)
                list(images.GenerateImage(GenerateImageRequest(prompt="a red circle", sampling=ImageSampling(steps=1)),
                                          metadata=md("image"), timeout=60))
                worker_pb2_grpc.UnderstandingWorkerServiceStub(channel).Understand(
                    UnderstandRequest(image=_png(), question="what is it?", max_tokens=1), metadata=md("understanding"),
                    timeout=60)
                break
            except grpc.RpcError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.flush()
                    tail = (path.parent / "serve.log").read_text()[-4000:]
                    pytest.fail(f"serve run did not bring the apps up:\n{tail}")
                time.sleep(2)
        yield channel
    finally:
        channel.close()
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: serve run shuts Serve and its Ray down
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (48, 48), (200, 30, 30)).save(buf, format="PNG")
    return buf.getvalue()


def test_every_app_of_the_file_serves_its_family(proxy: grpc.Channel) -> None:
    text = worker_pb2_grpc.TextWorkerServiceStub(proxy)
    described = text.DescribeText(DescribeTextRequest(), metadata=md("text"), timeout=30)
    assert [m.name for m in described.models] == ["d2f-arith"]  # the file's model, from the file's args
    msgs = list(text.GenerateText(GenerateTextRequest(prompt="What is 2+3?", max_tokens=16), metadata=md("text"),
                                  timeout=120))
    assert msgs[-1].finished and msgs[-1].forward_passes > 0
    out = list(worker_pb2_grpc.ImageWorkerServiceStub(proxy).GenerateImage(
        GenerateImageRequest(prompt="a blue square", sampling=ImageSampling(steps=2)), metadata=md("image"),
        timeout=120))[-1].output
    assert out.model == "shapes-nextstep" and Image.open(io.BytesIO(out.png)).size == (out.width, out.height)
    answer = list(worker_pb2_grpc.UnderstandingWorkerServiceStub(proxy).Understand(
        UnderstandRequest(image=_png(), question="what colour is the shape?", max_tokens=4),
        metadata=md("understanding"), timeout=120))
    assert answer[-1].finished


def test_an_rpc_of_another_family_is_unimplemented_with_the_reason(proxy: grpc.Channel) -> None:
    text_on_image_app = worker_pb2_grpc.TextWorkerServiceStub(proxy)
    with pytest.raises(grpc.RpcError) as err:
        list(text_on_image_app.GenerateText(GenerateTextRequest(prompt="hi"), metadata=md("image"), timeout=30))
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert "'image' worker app does not serve GenerateText" in (err.value.details() or "")


def test_every_worker_method_refuses_calls_without_the_internal_credential(proxy: grpc.Channel) -> None:
    """The worker API is for the gateway and dispatchers: no token (or a wrong one), no call — streaming,
    unary and CancelCall alike; with it, CountTokens counts as GenerateText will."""
    text = worker_pb2_grpc.TextWorkerServiceStub(proxy)
    control = worker_pb2_grpc.WorkerControlServiceStub(proxy)
    for bad in ((("application", "text"),), (("application", "text"), (WORKER_TOKEN_METADATA, "guess"))):
        calls = (lambda md=bad: list(text.GenerateText(GenerateTextRequest(prompt="hi"), metadata=md, timeout=30)),
                 lambda md=bad: text.DescribeText(DescribeTextRequest(), metadata=md, timeout=30),
                 lambda md=bad: text.CountTokens(CountTokensRequest(prompt="hi"), metadata=md, timeout=30),
                 lambda md=bad: control.CancelCall(CancelCallRequest(call_id="x"), metadata=md, timeout=30))
        for call in calls:
            with pytest.raises(grpc.RpcError) as err:
                call()
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "gateway and dispatchers only" in err.value.details()
    # Serve's HTTP proxy cannot be turned off alone: it listens on loopback, and runs no model.
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://127.0.0.1:{HTTP_PORT}/text", timeout=30)
    assert err.value.code == 404 and b"gRPC only" in err.value.read()
    described = text.DescribeText(DescribeTextRequest(), metadata=md("text"), timeout=30).models[0]
    n = text.CountTokens(CountTokensRequest(prompt="What is 2+3?"), metadata=md("text"), timeout=30).prompt_tokens
    assert described.prompt_overhead_tokens < n < described.max_positions
    longer = text.CountTokens(CountTokensRequest(prompt="What is 2+3? " * 4), metadata=md("text"), timeout=30)
    assert longer.prompt_tokens > n
