"""The KServe path with real `kserve.ModelServer`s on loopback, one per family (`python -m
services.workers.kserve`, each its own process, as in a pod): v2 REST and gRPC infer return what the
family's engine returns in-process for the same request (text equal, PNG equal in pixels), readiness
and metadata answer, the generate extension streams, and bad input is a 400 / INVALID_ARGUMENT that
names the problem while the server keeps serving."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
from kserve.protocol.grpc import grpc_predict_v2_pb2 as oip
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc as oip_grpc
from kserve.protocol.infer_type import InferResponse
from PIL import Image

from services.queue.redis_server import free_port
from services.workers import serve_config
from services.workers.config import REPO_ROOT
from services.workers.family import ReplicaLimits
from tessera.worker.v1 import worker_pb2 as w
from tests.k8s.test_kserve_manifests import runtime_argv

TOM = "Tom has 5 apples. He buys 3 more. He finds 4 more. He sells 2. How many apples does Tom have now?"
MODELS = {"text": "d2f-arith", "image": "shapes-nextstep", "understanding": "shapes-orthus"}


class Server:
    def __init__(self, family: str) -> None:
        self.family, self.model = family, MODELS[family]
        self.http, self.grpc = free_port(), free_port()
        self.log = open(os.devnull, "w")  # noqa: SIM115 - closed in stop()
        # The ServingRuntime's own command (k8s/kserve/<family>.yaml), on this machine's CPU and free ports.
        argv = runtime_argv(family)
        local = {"--args": json.dumps({"model": {"device": "cpu", "dtype": "float32"}}),
                 "--http_port": str(self.http), "--grpc_port": str(self.grpc)}
        argv = [local.get(argv[i - 1], a) if i else a for i, a in enumerate(argv)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "services.workers.kserve", *argv, "--max-batch", "4", "--max-text-chars", "2000",
             "--max-image-bytes", "200000"], cwd=REPO_ROOT, stdout=self.log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"127.0.0.1:{self.grpc}")
        self.stub = oip_grpc.GRPCInferenceServiceStub(self.channel)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.http}{path}"

    def wait_ready(self, deadline: float) -> None:
        while True:
            try:
                if self.stub.ModelReady(oip.ModelReadyRequest(name=self.model), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass
            assert self.proc.poll() is None, f"the {self.family} model server exited"
            assert time.monotonic() < deadline, f"the {self.family} model server never became ready"
            time.sleep(0.5)

    def stop(self) -> None:
        self.channel.close()
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Server]]:
    started = {f: Server(f) for f in MODELS}  # all three load at once
    try:
        deadline = time.monotonic() + 180
        for s in started.values():
            s.wait_ready(deadline)
        yield started
    finally:
        for s in started.values():
            s.stop()


def post(server: Server, path: str, body: Any) -> tuple[int, Any]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(server.url(path), data=data, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if not path.endswith("generate_stream") else raw.decode())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def tensor(name: str, values: list[str]) -> dict[str, Any]:
    return {"name": name, "shape": [len(values)], "datatype": "BYTES", "data": values}


def grpc_bytes(name: str, values: list[bytes]) -> oip.ModelInferRequest.InferInputTensor:
    return oip.ModelInferRequest.InferInputTensor(name=name, datatype="BYTES", shape=[len(values)],
                                                  contents=oip.InferTensorContents(bytes_contents=values))


def grpc_output(resp: oip.ModelInferResponse, name: str) -> list[Any]:
    """An output tensor's elements, whether KServe sent them as contents or raw bytes."""
    parsed = InferResponse.from_grpc(resp)
    return next(o for o in parsed.outputs if o.name == name).as_numpy().tolist()


def engine_messages(family: str, rpc: str, request: Any) -> list[Any]:
    """The family's engine in this process, on the Serve config's args: the reference answer."""
    schema = serve_config.load()
    app = next(a for a in schema.applications if serve_config.family_of(a).name == family)
    fam = serve_config.family_of(app)
    args = fam.args.load(app.args)

    async def go() -> list[Any]:
        eng = fam.engine(args, ReplicaLimits(max_ongoing_requests=4))
        await eng.start()
        try:
            return [m async for m in getattr(eng, fam.rpcs[rpc].engine_method)(request)]
        finally:
            await eng.shutdown()
    return asyncio.run(go())


def _png(color: tuple[int, int, int] = (200, 30, 30), side: int = 48) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), color).save(buf, format="PNG")
    return buf.getvalue()


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def test_text_rest_and_grpc_return_the_engines_answer(servers: dict[str, Server]) -> None:
    s = servers["text"]
    want = "".join(m.text for m in engine_messages("text", "GenerateText",
                                                   w.GenerateTextRequest(prompt=TOM, max_tokens=64)))
    assert "The answer is 10." in want
    code, body = post(s, f"/v2/models/{s.model}/infer", {"inputs": [tensor("text_input", [TOM, TOM])],
                                                          "parameters": {"max_tokens": 64}})
    assert code == 200, body
    outs = {o["name"]: o for o in body["outputs"]}
    assert outs["text_output"]["data"] == [want, want]  # a batch of two, each what the engine says
    assert outs["finish_reason"]["data"] == ["stop", "stop"] and outs["completion_tokens"]["datatype"] == "INT32"
    resp = s.stub.ModelInfer(oip.ModelInferRequest(
        model_name=s.model, inputs=[grpc_bytes("text_input", [TOM.encode()])],
        parameters={"max_tokens": oip.InferParameter(int64_param=64)}), timeout=120)
    assert grpc_output(resp, "text_output") == [want.encode()]
    # The generate extension streams the same text, a block at a time.
    body = {"text_input": TOM, "parameters": {"max_tokens": 64}}
    code, stream = post(s, f"/v2/models/{s.model}/generate_stream", body)
    events = [json.loads(line[6:]) for line in stream.splitlines() if line.startswith("data: ")]
    assert code == 200 and len(events) > 1 and "".join(e["text_output"] for e in events) == want
    assert events[-1]["finish_reason"] == "stop"
    code, one = post(s, f"/v2/models/{s.model}/generate", body)
    assert code == 200 and one["text_output"] == want


def test_image_rest_and_grpc_return_the_engines_pixels(servers: dict[str, Server]) -> None:
    s = servers["image"]
    sampling = w.ImageSampling(steps=2, seed=7)
    want = engine_messages("image", "GenerateImage", w.GenerateImageRequest(prompt="a red circle", sampling=sampling))
    want_png = want[-1].output.png
    params = {"steps": 2, "seed": 7}
    code, body = post(s, f"/v2/models/{s.model}/infer", {"inputs": [tensor("text_input", ["a red circle"])],
                                                          "parameters": params})
    assert code == 200, body
    out = {o["name"]: o for o in body["outputs"]}
    assert out["image"]["parameters"] == {"content_type": "base64"}
    assert np.array_equal(_pixels(base64.b64decode(out["image"]["data"][0])), _pixels(want_png))
    assert out["seed"]["data"] == [7]
    resp = s.stub.ModelInfer(oip.ModelInferRequest(
        model_name=s.model, inputs=[grpc_bytes("text_input", [b"a red circle"])],
        parameters={k: oip.InferParameter(int64_param=v) for k, v in params.items()}), timeout=120)
    assert np.array_equal(_pixels(grpc_output(resp, "image")[0]), _pixels(want_png))
    # Editing: an `image` input beside the instruction.
    code, body = post(s, f"/v2/models/{s.model}/infer", {
        "inputs": [tensor("text_input", ["make the circle green"]),
                   tensor("image", [base64.b64encode(want_png).decode()])], "parameters": params})
    assert code == 200 and Image.open(io.BytesIO(base64.b64decode(body["outputs"][0]["data"][0]))).format == "PNG"


def test_understanding_returns_the_engines_answer(servers: dict[str, Server]) -> None:
    s = servers["understanding"]
    png = _png()
    want = "".join(m.text for m in engine_messages("understanding", "Understand", w.UnderstandRequest(
        image=png, question="what colour is the shape?", max_tokens=8)))
    code, body = post(s, f"/v2/models/{s.model}/infer", {
        "inputs": [tensor("image", [base64.b64encode(png).decode()]),
                   tensor("text_input", ["what colour is the shape?"])],
        "parameters": {"max_tokens": 8}})
    assert code == 200, body
    assert {o["name"]: o for o in body["outputs"]}["text_output"]["data"] == [want]


def test_readiness_and_metadata(servers: dict[str, Server]) -> None:
    for s in servers.values():
        assert s.stub.ServerLive(oip.ServerLiveRequest(), timeout=5).live
        assert s.stub.ServerReady(oip.ServerReadyRequest(), timeout=5).ready
        meta = s.stub.ModelMetadata(oip.ModelMetadataRequest(name=s.model), timeout=5)
        assert "text_input" in [i.name for i in meta.inputs]
        with urllib.request.urlopen(s.url(f"/v2/models/{s.model}/ready"), timeout=5) as r:
            assert r.status == 200
        with urllib.request.urlopen(s.url(f"/v2/models/{s.model}"), timeout=5) as r:
            assert json.loads(r.read())["outputs"][0]["name"] in ("text_output", "image")


BAD: list[tuple[str, dict[str, Any], str]] = [
    ("text", {"inputs": [{"name": "text_input", "shape": [1], "datatype": "FP32", "data": [1.0]}]}, "must be BYTES"),
    ("text", {"inputs": [tensor("prompt", ["hi"])]}, "missing input tensor 'text_input'"),
    ("text", {"inputs": [tensor("text_input", ["x" * 2001])]}, "the limit is 2000"),
    ("text", {"inputs": [tensor("text_input", ["hi"] * 5)]}, "1 <= N <= 4"),
    ("text", {"inputs": [tensor("text_input", ["hi"])], "parameters": {"temprature": 0.5}}, "unknown parameter"),
    ("text", {"inputs": [tensor("text_input", ["hi"])], "parameters": {"max_tokens": "many"}}, "must be an integer"),
    ("text", {"inputs": [tensor("text_input", ["hi"])], "parameters": {"top_p": 3.0}}, "must be in [0, 1]"),
    ("text", {"inputs": [tensor("text_input", ["hi"])], "parameters": {"max_tokens": 100000}}, "max_tokens"),
    ("text", {"inputs": [tensor("text_input", ["   "])]}, "is empty"),
    ("image", {"inputs": [tensor("text_input", ["a"]), tensor("image", ["not base64!"])]}, "base64"),
    ("image", {"inputs": [tensor("text_input", ["a"]), tensor("image", [base64.b64encode(b"GIF89a...").decode()])]},
     "not a decodable"),
    ("understanding", {"inputs": [tensor("text_input", ["what?"])]}, "missing input tensor 'image'"),
]


@pytest.mark.parametrize(("family", "body", "message"), BAD, ids=[m for _, _, m in BAD])
def test_bad_input_is_a_400_that_says_why(servers: dict[str, Server], family: str, body: dict[str, Any],
                                          message: str) -> None:
    s = servers[family]
    code, err = post(s, f"/v2/models/{s.model}/infer", body)
    assert code == 400 and message in err["error"], err
    assert "Traceback" not in err["error"]


def test_bad_input_over_grpc_is_invalid_argument_and_the_server_keeps_serving(servers: dict[str, Server]) -> None:
    s = servers["text"]
    with pytest.raises(grpc.RpcError) as e:
        s.stub.ModelInfer(oip.ModelInferRequest(model_name=s.model, inputs=[grpc_bytes("text_input", [b"\xff\xfe"])]),
                          timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "UTF-8" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        s.stub.ModelInfer(oip.ModelInferRequest(model_name=s.model, inputs=[grpc_bytes("text_input", [b"hi"])],
                                                parameters={"seed": oip.InferParameter(string_param="x")}), timeout=30)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "'seed'" in e.value.details()
    code, err = post(s, f"/v2/models/{s.model}/generate_stream", b"{not json")
    assert code == 400 and "not JSON" in err["error"]
    resp = s.stub.ModelInfer(oip.ModelInferRequest(model_name=s.model, inputs=[grpc_bytes("text_input", [b"hi"])],
                                                   parameters={"max_tokens": oip.InferParameter(int64_param=4)}),
                             timeout=60)
    assert resp.model_name == s.model
