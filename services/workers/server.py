"""The one worker server: the Ray Serve deployment class every model family runs.

Serve's gRPC proxy routes an RPC to the replica method of the same name, so the class names every
worker RPC once; a family serves the ones in its `Family.rpcs` and the rest answer UNIMPLEMENTED.
The server owns what all families share: config, the engine's lifecycle (start, health, shutdown),
per-RPC latency and error metrics, INVALID_ARGUMENT for requests the engine refuses, and
WorkerControlService.CancelCall over the replica's running calls. The engine owns the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import ray
from ray import serve
from ray.serve.grpc_util import RayServegRPCContext

from services.workers.cancellation import CallRegistry
from services.workers.config import AppArgs
from services.workers.family import Family, ReplicaLimits
from services.workers.metrics import StreamObserver, WorkerMetrics
from services.workers.protocol import (
    WORKER_FAILURE_PREFIX,
    InvalidRequestError,
    WorkerEngine,
    call_id_of,
    check_token,
    require_token,
)
from tessera.worker.v1 import worker_pb2 as pb

Context = RayServegRPCContext | None


class _Unimplemented(Exception):
    pass


def _set_failure(grpc_context: RayServegRPCContext, e: Exception) -> None:
    """The status of an engine failure: RESOURCE_EXHAUSTED for memory (another replica may have it,
    so the dispatcher retries), else INTERNAL marked as the worker's own (the dispatcher ends the job
    with this reason instead of retrying a request that fails the same way everywhere). The message
    names the error, never a traceback."""
    if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError":  # torch.OutOfMemoryError
        grpc_context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        grpc_context.set_details(f"the replica ran out of memory ({type(e).__name__})")
        return
    reason = str(e).splitlines()[0][:300] if str(e) else ""
    grpc_context.set_code(grpc.StatusCode.INTERNAL)
    grpc_context.set_details(f"{WORKER_FAILURE_PREFIX}the model failed on this request ({type(e).__name__}"
                             f"{': ' + reason if reason else ''})")


def replica_limits(default_max_ongoing: int = 4) -> ReplicaLimits:
    """This replica's admission limit, as Serve applied it (the config's `deployments:` overrides it)."""
    try:
        cfg = serve.get_replica_context()._deployment_config  # the only place Serve exposes it to a replica
        return ReplicaLimits(max_ongoing_requests=cfg.max_ongoing_requests)
    except (AttributeError, RuntimeError):  # not inside a replica (direct construction in tests)
        return ReplicaLimits(max_ongoing_requests=default_max_ongoing)


def check_devices(args: AppArgs) -> None:
    """A cuda model in a replica Ray gave no GPU would fail deep inside torch; say why instead."""
    device = args.model.device
    if device.startswith("cuda") and ray.is_initialized() and not ray.get_gpu_ids():
        raise RuntimeError(f"model.device is {device!r} but this replica has no GPU: give its deployment "
                           "ray_actor_options.num_gpus > 0 in the Serve config")


class WorkerServer:
    """Serves one family's worker service (and WorkerControlService) over one engine."""

    # Ray Serve awaits an async constructor; the engine loads the model here.
    async def __init__(self, family: Family, args: AppArgs | dict[str, Any]) -> None:  # type: ignore[misc]
        self.family = family
        self.args = family.args.load(args)
        check_devices(self.args)
        self.engine: WorkerEngine = family.engine(self.args, replica_limits())
        await self.engine.start()
        self.metrics = WorkerMetrics(self.args.model.name)
        self.calls = CallRegistry()
        self.calls.start()
        self.token = require_token()

    # --- the worker RPCs, named exactly like the protos' methods: Serve routes by name ---------------

    async def GenerateText(self, request: pb.GenerateTextRequest, grpc_context: Context = None,
                           ) -> AsyncIterator[pb.GenerateTextResponse]:
        async for msg in self._stream("GenerateText", request, grpc_context):
            yield msg

    async def DescribeText(self, request: pb.DescribeTextRequest, grpc_context: Context = None,
                           ) -> pb.DescribeTextResponse:
        return await self._unary("DescribeText", request, grpc_context)

    async def CountTokens(self, request: pb.CountTokensRequest, grpc_context: Context = None,
                          ) -> pb.CountTokensResponse:
        return await self._unary("CountTokens", request, grpc_context)

    async def GenerateImage(self, request: pb.GenerateImageRequest, grpc_context: Context = None,
                            ) -> AsyncIterator[pb.GenerateImageResponse]:
        async for msg in self._stream("GenerateImage", request, grpc_context):
            yield msg

    async def EditImage(self, request: pb.EditImageRequest, grpc_context: Context = None,
                        ) -> AsyncIterator[pb.EditImageResponse]:
        async for msg in self._stream("EditImage", request, grpc_context):
            yield msg

    async def Understand(self, request: pb.UnderstandRequest, grpc_context: Context = None,
                         ) -> AsyncIterator[pb.UnderstandResponse]:
        async for msg in self._stream("Understand", request, grpc_context):
            yield msg

    async def CancelCall(self, request: pb.CancelCallRequest, grpc_context: Context = None) -> pb.CancelCallResponse:
        self._authorize("CancelCall", grpc_context)
        return pb.CancelCallResponse(cancelled_here=await self.calls.cancel(request.call_id, request.job_id))

    # --- Serve's replica hooks and handle-only diagnostics -----------------------------------------

    async def __call__(self, request: Any) -> Any:
        """Serve's HTTP proxy routes here (it cannot be turned off without the gRPC proxy in Ray 2.60):
        a plain 404 instead of the 500 a deployment without __call__ gives. No model runs on HTTP."""
        from starlette.responses import PlainTextResponse

        return PlainTextResponse(f"the {self.family.name} worker serves gRPC only (tessera.worker.v1), "
                                 "to Tessera's gateway and dispatchers\n", status_code=404)

    async def check_health(self) -> None:
        await self.engine.check_health()

    def stats(self, name: str, *args: Any) -> Any:
        """A diagnostic the family declares (e.g. text "job_stats"), via a DeploymentHandle only: the gRPC
        proxy routes nothing here, it is not a method of any worker service."""
        if name not in self.family.stats:
            raise ValueError(f"the {self.family.name} worker has no stats {name!r}; it has {self.family.stats}")
        return getattr(self.engine, name)(*args)

    async def __del__(self) -> None:
        # Serve awaits this on graceful shutdown: cancel what still runs, then stop the model threads.
        await self.calls.stop()
        await self.engine.shutdown()

    # --- shared plumbing ----------------------------------------------------------------------------

    def _authorize(self, method: str, grpc_context: Context) -> None:
        """Refuse a gRPC call without the internal credential (handle calls have no grpc_context)."""
        if grpc_context is not None and not check_token(self.token, grpc_context.invocation_metadata()):
            grpc_context.set_code(grpc.StatusCode.UNAUTHENTICATED)
            grpc_context.set_details("the worker API takes calls from Tessera's gateway and dispatchers only")
            self.metrics.errors.inc(tags={"method": method, "code": "unauthenticated"})
            raise PermissionError("worker call without the internal credential")

    def _rpc(self, method: str, grpc_context: Context) -> Any:
        self._authorize(method, grpc_context)
        rpc = self.family.rpcs.get(method)
        if rpc is None:
            if grpc_context is not None:
                grpc_context.set_code(grpc.StatusCode.UNIMPLEMENTED)
                grpc_context.set_details(f"the {self.family.name!r} worker app does not serve {method}")
            self.metrics.errors.inc(tags={"method": method, "code": "unimplemented"})
            raise _Unimplemented(method)
        return rpc

    async def _unary(self, method: str, request: Any, grpc_context: Context) -> Any:
        rpc = self._rpc(method, grpc_context)
        started = time.perf_counter()
        try:
            out = getattr(self.engine, rpc.engine_method)(request)
            return await out if asyncio.iscoroutine(out) else out
        finally:
            self.metrics.latency.observe(time.perf_counter() - started, tags={"method": method})

    async def _stream(self, method: str, request: Any, grpc_context: Context) -> AsyncIterator[Any]:
        """Relay the engine's stream: INVALID_ARGUMENT for requests the engine refuses, latency and error
        counts by code, the family's observer on every message, and the engine's generator closed however
        the call ends (closing it is what stops the model work when the caller goes). While it runs the
        call is in `self.calls` under its call id, for CancelCall."""
        rpc = self._rpc(method, grpc_context)
        observer: StreamObserver | None = rpc.observe(self.metrics, method, request) if rpc.observe else None
        started, code = time.perf_counter(), None
        call_id = call_id_of(grpc_context.invocation_metadata()) if grpc_context is not None else ""
        try:
            with self.calls.track(call_id):
                async with contextlib.aclosing(getattr(self.engine, rpc.engine_method)(request)) as stream:
                    async for msg in stream:
                        if observer is not None:
                            observer.on_message(msg)
                        yield msg
        except InvalidRequestError as e:
            code = "invalid_argument"
            # Serve keeps a code set on the context when the method raises (else: INTERNAL).
            if grpc_context is not None:
                grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
                grpc_context.set_details(str(e))
            raise
        except (asyncio.CancelledError, GeneratorExit):
            code = "cancelled"
            raise
        except Exception as e:
            code = "internal"
            if grpc_context is not None:
                _set_failure(grpc_context, e)
            raise
        finally:
            self.metrics.latency.observe(time.perf_counter() - started, tags={"method": method})
            if code is not None:
                self.metrics.errors.inc(tags={"method": method, "code": code})
            if observer is not None:
                observer.on_end()
