"""The tensor mapping without a server: parameters from REST and gRPC alike, their checks, BYTES inputs."""

from __future__ import annotations

import base64
import io

import pytest
from kserve.errors import InvalidInput
from kserve.protocol.grpc import grpc_predict_v2_pb2 as oip
from kserve.protocol.infer_type import InferInput, InferRequest
from PIL import Image

from services.workers.kserve.tensors import TEXT_PARAMS, Limits, checked_parameters, image_calls, text_calls


def _req(inputs: list[InferInput], parameters: object = None) -> InferRequest:
    return InferRequest(model_name="m", infer_inputs=inputs, request_id="r1", parameters=parameters)


def _text(*values: str) -> InferInput:
    return InferInput(name="text_input", shape=[len(values)], datatype="BYTES", data=list(values))


def test_parameters_from_rest_and_grpc_are_the_same_calls() -> None:
    rest = _req([_text("a", "b")], {"max_tokens": 8, "temperature": 0.5, "seed": 3, "tau_conf": 0.8,
                                    "raw_prompt": True})
    grpc_params = {"max_tokens": oip.InferParameter(int64_param=8),
                   "temperature": oip.InferParameter(string_param="0.5"),  # no double in KServe's gRPC
                   "seed": oip.InferParameter(int64_param=3), "tau_conf": oip.InferParameter(string_param="0.8"),
                   "raw_prompt": oip.InferParameter(bool_param=True)}
    grpc = _req([_text("a", "b")], grpc_params)
    for req in (rest, grpc):
        calls = text_calls(req, Limits(), "m")
        assert [c.request.prompt for c in calls] == ["a", "b"] and [c.request.job_id for c in calls] == ["r1-0", "r1-1"]
        r = calls[0].request
        assert (r.max_tokens, r.seed, r.model) == (8, 3, "m") and r.HasField("tau_conf") and not r.HasField("tau_add")
        assert r.temperature == pytest.approx(0.5) and r.raw_prompt
    assert not text_calls(_req([_text("a")], {"raw_prompt": False}), Limits(), "m")[0].request.raw_prompt
    assert not text_calls(_req([_text("a")]), Limits(), "m")[0].request.raw_prompt


@pytest.mark.parametrize(("params", "message"), [
    ({"max_tokens": 1.5}, "must be an integer"), ({"max_tokens": True}, "must be an integer"),
    ({"top_p": float("nan")}, "must be in"), ({"tau_add": -0.1}, "must be in"), ({"beam": 2}, "unknown parameter"),
    ({"raw_prompt": 1}, "must be a boolean"), ({"raw_prompt": "true"}, "must be a boolean"),
    ({"max_tokens": "x"}, "must be an integer"),
])
def test_bad_parameters_name_themselves(params: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        checked_parameters(_req([_text("a")], params), TEXT_PARAMS)
    assert checked_parameters(_req([_text("a")], {"binary_data_output": True}), TEXT_PARAMS) == {}


def test_an_edit_takes_base64_images_in_json_and_checks_them() -> None:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 0, 255)).save(buf, format="PNG")
    png = buf.getvalue()
    img = InferInput(name="image", shape=[1], datatype="BYTES", data=[base64.b64encode(png).decode()])
    call, = image_calls(_req([_text("make it red"), img], {"steps": 2}), Limits(), "m")
    assert call.rpc == "EditImage" and call.request.image == png and call.request.sampling.steps == 2
    tiny = InferInput(name="image", shape=[1], datatype="BYTES", data=[base64.b64encode(png).decode()])
    with pytest.raises(InvalidInput, match=r"image\[0\] is 16x16"):
        image_calls(_req([_text("x"), tiny]), Limits(min_side=32), "m")
    two = InferInput(name="image", shape=[2], datatype="BYTES", data=[base64.b64encode(png).decode()] * 2)
    with pytest.raises(InvalidInput, match="same batch size"):
        image_calls(_req([_text("x"), two]), Limits(), "m")
