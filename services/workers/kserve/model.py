"""`FamilyModel`: one model family served by KServe, over the family's own engine (the engine the Ray
Serve worker runs: no second copy of model logic). KServe's `InferRequest` becomes the worker API's
requests (tensors.py), each goes through the engine method the family names for its RPC, and the
last message of each stream becomes the response's tensors.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from kserve import Model
from kserve.errors import InferenceError, InvalidInput, ModelNotReady
from kserve.protocol.infer_type import InferRequest, InferResponse

from services.workers.config import AppArgs
from services.workers.family import Family, ReplicaLimits
from services.workers.kserve.tensors import MAPPINGS, Call, Limits
from services.workers.protocol import InvalidRequestError, WorkerEngine

log = logging.getLogger(__name__)


class FamilyModel(Model):
    def __init__(self, family: Family, args: AppArgs, limits: Limits | None = None,
                 max_concurrency: int = 16) -> None:
        super().__init__(args.model.name)
        self.family, self.args = family, args
        self.limits = limits or Limits()
        self.tensors = MAPPINGS[family.name]
        self.max_concurrency = max_concurrency
        self.worker: WorkerEngine | None = None
        # KServe's flag: start_engine() runs in the server's event loop, where the engine must live.
        self.engine = True

    # ---- lifecycle -----------------------------------------------------------------------------------
    def load(self) -> bool:
        # KServe registers only a model that is ready when the server starts, and calls load() again on a
        # request while not ready; the engine itself loads in start_engine (inside the serving loop).
        # healthy() (what /v2/models/<name>/ready and gRPC ModelReady ask) says whether it has.
        self.ready = True
        return True

    async def healthy(self) -> bool:
        if self.worker is None:
            return False
        try:
            await self.worker.check_health()
        except Exception:
            log.exception("%s engine unhealthy", self.name)
            return False
        return True

    async def start_engine(self) -> None:
        worker = self.family.engine(self.args, ReplicaLimits(max_ongoing_requests=self.max_concurrency))
        await worker.start()
        self.worker = worker
        log.info("%s engine started (%s family)", self.name, self.family.name)

    def stop_engine(self) -> None:
        worker, self.worker = self.worker, None
        if worker is not None:
            with contextlib.suppress(RuntimeError):
                asyncio.get_running_loop().create_task(worker.shutdown())

    def get_input_types(self) -> list[dict[str, Any]]:
        return self.tensors.inputs_meta

    def get_output_types(self) -> list[dict[str, Any]]:
        return self.tensors.outputs_meta

    # ---- inference -----------------------------------------------------------------------------------
    def calls(self, payload: InferRequest) -> list[Call]:
        """The worker calls a request maps to (InvalidInput when it cannot)."""
        if not isinstance(payload, InferRequest):
            raise InvalidInput("this model speaks the Open Inference Protocol (v2) only")
        return self.tensors.calls(payload, self.limits, self.name)

    async def predict(self, payload: InferRequest, headers: dict[str, str] | None = None,
                      response_headers: dict[str, str] | None = None) -> InferResponse:
        calls = self.calls(payload)
        finals = await asyncio.gather(*(self._run(c) for c in calls))
        # gRPC carries bytes as they are; REST's JSON only if the caller asked for binary outputs.
        outputs = self.tensors.outputs(list(finals), payload.from_grpc or payload.use_binary_outputs)
        return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs,
                             from_grpc=payload.from_grpc, use_binary_outputs=payload.use_binary_outputs)

    def stream(self, call: Call) -> AsyncIterator[Any]:
        """The engine's messages for one call (InvalidInput for a request it refuses)."""
        if self.worker is None:
            raise ModelNotReady(self.name, "the engine is still loading")
        method = getattr(self.worker, self.family.rpcs[call.rpc].engine_method)
        return method(call.request)

    async def _run(self, call: Call) -> dict[str, Any]:
        """One call to its end: the text or image it made and the last message's fields."""
        text: list[str] = []
        tokens, last = 0, None
        try:
            async with contextlib.aclosing(self.stream(call)) as messages:
                async for msg in messages:
                    last = msg
                    if hasattr(msg, "token_count"):
                        text.append(msg.text)
                        tokens += msg.token_count
        except InvalidRequestError as e:
            raise InvalidInput(str(e)) from e
        except (InvalidInput, ModelNotReady):
            raise
        except Exception as e:  # the engine failed on this request: say what, never a traceback
            log.exception("%s: %s failed", self.name, call.rpc)
            raise InferenceError(f"the model failed on this request ({type(e).__name__})") from e
        if last is None:
            raise InferenceError(f"the {self.family.name} engine ended its stream without a message")
        if hasattr(last, "token_count"):
            return {"text": "".join(text), "finish_reason": last.finish_reason or "length", "tokens": tokens}
        out = last.output
        return {"png": out.png, "seed": out.seed, "width": out.width, "height": out.height}
