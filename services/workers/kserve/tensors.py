"""Open Inference Protocol tensors <-> the worker API, per family.

The convention is Triton's (TensorRT-LLM backend, generate extension): text goes in as a BYTES
tensor `text_input` and comes back as `text_output`, generation settings ride in the request's
`parameters`. Images are BYTES tensors of PNG (or JPEG) bytes. A batch is the tensor's first
dimension: N prompts make N engine calls, which the engine batches.

- text: input `text_input` BYTES [N]; parameters max_tokens, temperature, top_p, seed, block_size,
  tau_add, tau_act, tau_conf, raw_prompt (a boolean: the prompt as is, no template, no BOS); outputs
  `text_output` BYTES [N], `finish_reason` BYTES [N], `completion_tokens` INT32 [N].
- image: inputs `text_input` BYTES [N] (the prompt, or the edit instruction) and, to edit, `image`
  BYTES [N]; parameters width, height, steps, guidance_scale, image_guidance_scale, seed; outputs
  `image` BYTES [N] (PNG), `seed` INT64 [N].
- understanding: inputs `image` BYTES [N], `text_input` BYTES [N] (the question); parameter
  max_tokens; outputs `text_output` BYTES [N], `finish_reason` BYTES [N].

Over REST's JSON, BYTES elements are strings: text as UTF-8, image bytes base64 (or the binary
tensor extension, which KServe speaks). Every problem is `InvalidInput` naming the tensor or the
parameter (HTTP 400, gRPC INVALID_ARGUMENT).
"""

from __future__ import annotations

import base64
import binascii
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferOutput, InferRequest

from services.common.images import ImageError, inspect_image
from tessera.worker.v1 import worker_pb2 as pb

# Parameters KServe itself reads from a request; allowed beside a family's own.
_PROTOCOL_PARAMETERS = {"binary_data_output", "content_type", "headers"}


@dataclass(frozen=True, slots=True)
class Limits:
    """What one request may carry (the gateway's limits, for the path that has no gateway)."""

    max_batch: int = 16
    max_text_chars: int = 32768
    max_image_bytes: int = 4 << 20
    min_side: int = 8
    max_side: int = 1024

    def __post_init__(self) -> None:
        if min(self.max_batch, self.max_text_chars, self.max_image_bytes, self.min_side) <= 0:
            raise ValueError("kserve limits must be positive")


@dataclass(frozen=True, slots=True)
class Call:
    """One worker call a request maps to: the engine method (the Family's RPC) and its request."""

    rpc: str
    request: Any


@dataclass(frozen=True, slots=True)
class Param:
    kind: type  # int, float, bool
    low: float = 0.0  # the range of a number (a bool has none)
    high: float = 1.0


def parameters_of(req: InferRequest) -> dict[str, Any]:
    """The request's parameters as plain values (REST gives a dict, gRPC a map of InferParameter)."""
    raw = req.parameters or {}
    if isinstance(raw, Mapping) and all(isinstance(v, (bool, int, float, str)) or v is None for v in raw.values()):
        return dict(raw)
    out = {}
    for k, p in raw.items():
        which = p.WhichOneof("parameter_choice")
        out[k] = getattr(p, which) if which else None
    return out


def checked_parameters(req: InferRequest, spec: Mapping[str, Param]) -> dict[str, Any]:
    """The family's parameters, each of its type and in its range; unknown names are refused."""
    params = parameters_of(req)
    unknown = sorted(set(params) - set(spec) - _PROTOCOL_PARAMETERS)
    if unknown:
        raise InvalidInput(f"unknown parameter(s) {unknown}; this model takes {sorted(spec)}")
    out: dict[str, Any] = {}
    for name, p in spec.items():
        if name not in params or params[name] is None:
            continue
        if p.kind is bool:  # JSON true/false, gRPC bool_param: no strings or numbers guessed into a flag
            if not isinstance(params[name], bool):
                raise InvalidInput(f"parameter {name!r} must be a boolean (true or false), got {params[name]!r}")
            out[name] = params[name]
            continue
        v = _number(params[name])
        if isinstance(v, bool) or not isinstance(v, (int, float)) or (p.kind is int and not float(v).is_integer()):
            raise InvalidInput(f"parameter {name!r} must be {'an integer' if p.kind is int else 'a number'}, "
                               f"got {v!r}")
        if not (math.isfinite(v) and p.low <= v <= p.high):
            raise InvalidInput(f"parameter {name!r} must be in [{p.low:g}, {p.high:g}], got {v!r}")
        out[name] = p.kind(v)
    return out


def _number(v: Any) -> Any:
    """KServe's gRPC InferParameter has bool, int64 and string values but no double: a float parameter
    over gRPC comes as a string ("0.7"). A string that is not a number stays one (and is refused)."""
    if isinstance(v, str):
        try:
            return int(v) if v.strip().lstrip("+-").isdigit() else float(v)
        except ValueError:
            return v
    return v


def bytes_tensor(req: InferRequest, name: str, limits: Limits, *, image: bool) -> list[bytes]:
    """The elements of BYTES input `name` (required), shape [N] with 1 <= N <= max_batch."""
    found = [i for i in req.inputs if i.name == name]
    if not found:
        raise InvalidInput(f"missing input tensor {name!r} (BYTES)")
    t = found[0]
    if t.datatype != "BYTES":
        raise InvalidInput(f"input {name!r} must be BYTES, got {t.datatype}")
    if len(t.shape) != 1 or not 1 <= t.shape[0] <= limits.max_batch:
        raise InvalidInput(f"input {name!r} must have shape [N] with 1 <= N <= {limits.max_batch}, got {t.shape}")
    try:
        values = t.as_numpy().reshape(-1).tolist()
    except (ValueError, TypeError) as e:  # shape and data disagree
        raise InvalidInput(f"input {name!r}: {e}") from e
    out = [_as_bytes(v, name, image) for v in values]
    for i, b in enumerate(out):
        _check_element(b, f"{name}[{i}]", limits, image)
    return out


def _as_bytes(v: Any, name: str, image: bool) -> bytes:
    if isinstance(v, bytes):
        return v
    if isinstance(v, str):
        if not image:
            return v.encode()
        try:  # JSON cannot carry binary: an image element is base64
            return base64.b64decode(v, validate=True)
        except (binascii.Error, ValueError) as e:
            raise InvalidInput(f"input {name!r}: an image in JSON must be base64 ({e})") from e
    raise InvalidInput(f"input {name!r}: elements must be bytes or strings, got {type(v).__name__}")


def _check_element(b: bytes, where: str, limits: Limits, image: bool) -> None:
    if image:
        if len(b) > limits.max_image_bytes:
            raise InvalidInput(f"{where} is {len(b)} bytes; the limit is {limits.max_image_bytes}")
        try:
            inspect_image(b, limits.min_side, limits.max_side)
        except ImageError as e:
            raise InvalidInput(f"{where} {e}") from e
        return
    try:
        text = b.decode()
    except UnicodeDecodeError as e:
        raise InvalidInput(f"{where} is not UTF-8 text") from e
    if not text.strip():
        raise InvalidInput(f"{where} is empty")
    if len(text) > limits.max_text_chars:
        raise InvalidInput(f"{where} is {len(text)} characters; the limit is {limits.max_text_chars}")


def _same_batch(*tensors: list[bytes]) -> int:
    n = {len(t) for t in tensors}
    if len(n) != 1:
        raise InvalidInput(f"input tensors must have the same batch size, got {sorted(n)}")
    return n.pop()


def bytes_output(name: str, values: list[bytes] | list[str], binary: bool) -> InferOutput:
    """A BYTES output: text as strings; image bytes raw for gRPC / REST's binary extension, else
    base64 strings (marked with the output parameter content_type=base64)."""
    out = InferOutput(name=name, shape=[len(values)], datatype="BYTES")
    if values and isinstance(values[0], bytes) and not binary:
        out._data = [base64.b64encode(v).decode() for v in values]  # type: ignore[arg-type]
        out._parameters = {"content_type": "base64"}
    else:
        out._data = list(values)
    return out


def int_output(name: str, values: list[int], datatype: str) -> InferOutput:
    out = InferOutput(name=name, shape=[len(values)], datatype=datatype)
    out.set_data_from_numpy(np.array(values, dtype=np.int32 if datatype == "INT32" else np.int64), binary_data=False)
    return out


# ---- the families ----------------------------------------------------------------------------------

TEXT_PARAMS = {"max_tokens": Param(int, 1, 1 << 20), "temperature": Param(float, 0.0, 10.0),
               "top_p": Param(float, 0.0, 1.0), "seed": Param(int, 0, 2**63 - 1), "block_size": Param(int, 1, 256),
               "tau_add": Param(float, 0.0, 1.0), "tau_act": Param(float, 0.0, 1.0),
               "tau_conf": Param(float, 0.0, 1.0), "raw_prompt": Param(bool)}
IMAGE_PARAMS = {"width": Param(int, 0, 4096), "height": Param(int, 0, 4096), "steps": Param(int, 0, 1000),
                "guidance_scale": Param(float, 0.0, 100.0), "image_guidance_scale": Param(float, 0.0, 100.0),
                "seed": Param(int, 0, 2**63 - 1)}
UNDERSTANDING_PARAMS = {"max_tokens": Param(int, 1, 1 << 20)}


def text_calls(req: InferRequest, limits: Limits, model: str) -> list[Call]:
    prompts = bytes_tensor(req, "text_input", limits, image=False)
    p = checked_parameters(req, TEXT_PARAMS)
    calls = []
    for i, prompt in enumerate(prompts):
        r = pb.GenerateTextRequest(job_id=f"{req.id or 'kserve'}-{i}", model=model, prompt=prompt.decode(),
                                   max_tokens=p.get("max_tokens", 0), temperature=p.get("temperature", 0.0),
                                   top_p=p.get("top_p", 0.0), block_size=p.get("block_size", 0),
                                   raw_prompt=p.get("raw_prompt", False))
        for name in ("seed", "tau_add", "tau_act", "tau_conf"):
            if name in p:
                setattr(r, name, p[name])
        calls.append(Call("GenerateText", r))
    return calls


def image_calls(req: InferRequest, limits: Limits, model: str) -> list[Call]:
    prompts = bytes_tensor(req, "text_input", limits, image=False)
    p = checked_parameters(req, IMAGE_PARAMS)
    sampling = pb.ImageSampling(width=p.get("width", 0), height=p.get("height", 0), steps=p.get("steps", 0),
                                guidance_scale=p.get("guidance_scale", 0.0),
                                image_guidance_scale=p.get("image_guidance_scale", 0.0))
    if "seed" in p:
        sampling.seed = p["seed"]
    rid = req.id or "kserve"
    if not any(i.name == "image" for i in req.inputs):
        return [Call("GenerateImage", pb.GenerateImageRequest(job_id=f"{rid}-{i}", model=model, prompt=t.decode(),
                                                              sampling=sampling)) for i, t in enumerate(prompts)]
    images = bytes_tensor(req, "image", limits, image=True)
    _same_batch(prompts, images)
    return [Call("EditImage", pb.EditImageRequest(job_id=f"{rid}-{i}", model=model, image=img, instruction=t.decode(),
                                                  sampling=sampling))
            for i, (t, img) in enumerate(zip(prompts, images, strict=True))]


def understanding_calls(req: InferRequest, limits: Limits, model: str) -> list[Call]:
    images = bytes_tensor(req, "image", limits, image=True)
    questions = bytes_tensor(req, "text_input", limits, image=False)
    _same_batch(images, questions)
    p = checked_parameters(req, UNDERSTANDING_PARAMS)
    return [Call("Understand", pb.UnderstandRequest(job_id=f"{req.id or 'kserve'}-{i}", model=model, image=img,
                                                    question=q.decode(), max_tokens=p.get("max_tokens", 0)))
            for i, (img, q) in enumerate(zip(images, questions, strict=True))]


def text_outputs(finals: list[dict[str, Any]], binary: bool) -> list[InferOutput]:
    """`finals`: per call, the text and the last message's fields (see model.FamilyModel._run)."""
    return [bytes_output("text_output", [f["text"] for f in finals], binary),
            bytes_output("finish_reason", [f["finish_reason"] for f in finals], binary),
            int_output("completion_tokens", [f["tokens"] for f in finals], "INT32")]


def image_outputs(finals: list[dict[str, Any]], binary: bool) -> list[InferOutput]:
    return [bytes_output("image", [f["png"] for f in finals], binary),
            int_output("seed", [f["seed"] for f in finals], "INT64")]


def understanding_outputs(finals: list[dict[str, Any]], binary: bool) -> list[InferOutput]:
    return [bytes_output("text_output", [f["text"] for f in finals], binary),
            bytes_output("finish_reason", [f["finish_reason"] for f in finals], binary)]


@dataclass(frozen=True, slots=True)
class FamilyTensors:
    """A family's tensor mapping (see the module's table)."""

    calls: Callable[[InferRequest, Limits, str], list[Call]]
    outputs: Callable[[list[dict[str, Any]], bool], list[InferOutput]]
    inputs_meta: list[dict[str, Any]]
    outputs_meta: list[dict[str, Any]]


def _meta(*specs: tuple[str, str]) -> list[dict[str, Any]]:
    return [{"name": n, "datatype": d, "shape": [-1]} for n, d in specs]


MAPPINGS: dict[str, FamilyTensors] = {
    "text": FamilyTensors(text_calls, text_outputs, _meta(("text_input", "BYTES")),
                     _meta(("text_output", "BYTES"), ("finish_reason", "BYTES"), ("completion_tokens", "INT32"))),
    "image": FamilyTensors(image_calls, image_outputs, _meta(("text_input", "BYTES"), ("image", "BYTES")),
                      _meta(("image", "BYTES"), ("seed", "INT64"))),
    "understanding": FamilyTensors(understanding_calls, understanding_outputs,
                              _meta(("image", "BYTES"), ("text_input", "BYTES")),
                              _meta(("text_output", "BYTES"), ("finish_reason", "BYTES"))),
}
