"""The image worker on real Ray Serve, called through Serve's real gRPC proxy: progress then a PNG,
concurrent requests batched into one model call, and refused requests as INVALID_ARGUMENT."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import Image
from ray import serve

from lab.training.images.tiny import NATIVE, PATCHES
from services.workers.image.family import IMAGE
from services.workers.protocol import CALL_ID_METADATA, token_metadata
from tessera.worker.v1 import worker_pb2_grpc
from tessera.worker.v1.worker_pb2 import CancelCallRequest, EditImageRequest, GenerateImageRequest, ImageSampling

MD = (("application", IMAGE.name), *token_metadata())


@pytest.fixture(scope="module")
def stub(image_checkpoints: Path, serve_cluster: Any) -> Iterator[worker_pb2_grpc.ImageWorkerServiceStub]:
    serve_cluster.deploy(IMAGE.name, {
        "model": {"name": "tiny", "backend": "orthus", "model_dir": str(image_checkpoints / "shapes-orthus"),
                  "steps": 3},
        "batching": {"max_batch_size": 4, "max_wait_ms": 200},
    }, {"max_ongoing_requests": 8, "ray_actor_options": {"num_cpus": 1}})
    channel = grpc.insecure_channel(f"127.0.0.1:{serve_cluster.grpc_port}")
    try:
        yield worker_pb2_grpc.ImageWorkerServiceStub(channel)
    finally:
        channel.close()
        serve.delete(IMAGE.name)


def generate(stub: worker_pb2_grpc.ImageWorkerServiceStub, prompt: str, **sampling: Any) -> list[Any]:
    req = GenerateImageRequest(job_id=prompt, prompt=prompt, sampling=ImageSampling(**sampling))
    return list(stub.GenerateImage(req, metadata=MD, timeout=60))


def test_progress_then_png_and_concurrent_requests_share_a_batch(stub: Any) -> None:
    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: generate(stub, f"{i} red circles", seed=i, width=64, height=64), range(4)))
    for msgs in outs:
        assert [m.WhichOneof("event") for m in msgs] == ["step"] * PATCHES + ["output"]
        assert [m.step.patches_done for m in msgs[:-1]] == list(range(1, PATCHES + 1))
        out = msgs[-1].output
        assert out.model == "tiny" and Image.open(io.BytesIO(out.png)).size == (64, 64)
    # Four concurrent calls within the 200 ms window: fewer model calls than requests.
    assert max(m[-1].output.batch_size for m in outs) >= 2
    edited = list(stub.EditImage(EditImageRequest(image=outs[0][-1].output.png, instruction="make it blue",
                                                  sampling=ImageSampling(preview=True)), metadata=MD, timeout=60))
    assert all(m.step.preview_png for m in edited[:-1]) and edited[-1].output.width == NATIVE


@pytest.mark.parametrize("request_,message", [
    (GenerateImageRequest(prompt=""), "prompt is empty"),
    (GenerateImageRequest(prompt="x", sampling=ImageSampling(steps=999)), "steps must be in"),
    (EditImageRequest(image=b"nope", instruction="x"), "image is not a decodable"),
])
def test_bad_requests_are_invalid_argument(stub: Any, request_: Any, message: str) -> None:
    call = stub.GenerateImage if isinstance(request_, GenerateImageRequest) else stub.EditImage
    with pytest.raises(grpc.RpcError) as err:
        list(call(request_, metadata=MD, timeout=30))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
    assert message in err.value.details()


def test_cancel_call_stops_an_image_call_midway(stub: Any, serve_cluster: Any) -> None:
    """WorkerControlService.CancelCall reaches the image app's running call by its call id (the
    dispatcher's fallback for cancellations Serve's proxy loses): the stream ends early, with an error."""
    req = GenerateImageRequest(job_id="doomed", prompt="a red circle", sampling=ImageSampling(steps=200, seed=1))
    call = stub.GenerateImage(req, metadata=(*MD, (CALL_ID_METADATA, "image-call")), timeout=60)
    assert next(call).step.patches_done == 1
    with grpc.insecure_channel(f"127.0.0.1:{serve_cluster.grpc_port}") as ch:
        control = worker_pb2_grpc.WorkerControlServiceStub(ch)
        assert control.CancelCall(CancelCallRequest(call_id="image-call", job_id="doomed"), metadata=MD,
                                  timeout=30).cancelled_here
    with pytest.raises(grpc.RpcError):  # not the remaining patches and a PNG
        list(call)
