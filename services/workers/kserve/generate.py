"""Triton's generate extension on KServe's REST app: the streaming the Open Inference Protocol lacks.

KServe 0.21 implements OIP's `infer` (REST and gRPC) but neither Triton's `generate` endpoints nor
a gRPC `ModelStreamInfer`. Text comes out of D2F a block at a time and images a patch at a time, so:

    POST /v2/models/{name}/generate         {"text_input": "...", "parameters": {...}}  -> one JSON object
    POST /v2/models/{name}/generate_stream  same body -> server-sent events, one per engine message

A body's keys other than `parameters` are the input tensors (a string, or a list of them: the batch;
images base64), mapped by the same tensors.py as `infer`. A stream serves one request (batch 1):
text events carry `text_output` (new text), image events `patches_done` / `patches_total`, and the
last event the result (`finish_reason`, or `image` and `seed`). An error before the first event is
the HTTP status; after it, an `error` event ends the stream.
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from kserve.errors import InferenceError, InvalidInput, ModelNotFound
from kserve.protocol.infer_type import InferInput, InferRequest

from services.workers.kserve.model import FamilyModel
from services.workers.protocol import InvalidRequestError


def infer_request(model: str, body: Any) -> InferRequest:
    """A generate body as an InferRequest of BYTES tensors."""
    if not isinstance(body, dict):
        raise InvalidInput("the body must be a JSON object of input tensors and `parameters`")
    params = body.get("parameters") or {}
    if not isinstance(params, dict):
        raise InvalidInput("`parameters` must be a JSON object")
    inputs = []
    for name, value in body.items():
        if name in ("parameters", "id"):
            continue
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, str) for v in values):
            raise InvalidInput(f"input {name!r} must be a string or a list of strings")
        inputs.append(InferInput(name=name, shape=[len(values)], datatype="BYTES", data=values))
    return InferRequest(model_name=model, infer_inputs=inputs, request_id=str(body.get("id", "")) or None,
                        parameters=params)


def _event(msg: Any) -> dict[str, Any]:
    """One engine message as a generate_stream event."""
    if hasattr(msg, "token_count"):
        ev: dict[str, Any] = {"text_output": msg.text}
        if msg.finished:
            ev["finish_reason"] = msg.finish_reason or "length"
        return ev
    if msg.WhichOneof("event") == "step":
        return {"patches_done": msg.step.patches_done, "patches_total": msg.step.patches_total}
    out = msg.output
    return {"image": base64.b64encode(out.png).decode(), "seed": out.seed, "width": out.width,
            "height": out.height, "finish_reason": "stop"}


def register(app: FastAPI, models: dict[str, FamilyModel]) -> None:
    def model_of(name: str) -> FamilyModel:
        if name not in models:
            raise ModelNotFound(name)
        return models[name]

    async def body_of(request: Request) -> Any:
        try:
            return await request.json()
        except ValueError as e:
            raise InvalidInput(f"the body is not JSON ({e})") from e

    @app.post("/v2/models/{model_name}/generate")
    async def generate(model_name: str, request: Request) -> JSONResponse:
        model = model_of(model_name)
        resp = await model.predict(infer_request(model_name, await body_of(request)))
        out: dict[str, Any] = {"model_name": model_name}
        for o in resp.outputs:
            data = o.data if o.data is not None else o.as_numpy().tolist()
            out[o.name] = data[0] if len(data) == 1 else list(data)
        return JSONResponse(out)

    @app.post("/v2/models/{model_name}/generate_stream")
    async def generate_stream(model_name: str, request: Request) -> StreamingResponse:
        model = model_of(model_name)
        calls = model.calls(infer_request(model_name, await body_of(request)))
        if len(calls) != 1:
            raise InvalidInput("generate_stream serves one request at a time (inputs of batch size 1)")
        messages = model.stream(calls[0])
        # The first message is awaited here, so a request the engine refuses is an HTTP 400, not a
        # 200 whose stream says so.
        try:
            first = await messages.__anext__()
        except InvalidRequestError as e:
            await messages.aclose()
            raise InvalidInput(str(e)) from e
        except StopAsyncIteration as e:
            raise InferenceError("the engine ended its stream without a message") from e

        async def events() -> AsyncIterator[bytes]:
            try:
                yield _sse({"model_name": model_name, **_event(first)})
                async for msg in messages:
                    yield _sse({"model_name": model_name, **_event(msg)})
            except Exception as e:
                yield _sse({"model_name": model_name, "error": f"the model failed on this request "
                                                               f"({type(e).__name__})"})
            finally:
                await messages.aclose()

        return StreamingResponse(events(), media_type="text/event-stream")


def _sse(data: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(data)}\n\n".encode()
