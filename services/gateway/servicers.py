"""The gateway's protocol layer: tessera.v1 servicers translating messages to data-plane calls."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from services.gateway.auth import Authenticator
from services.gateway.dataplane import DataPlane, error_from_status
from services.gateway.requests import current_request_id
from services.gateway.rpc_errors import RpcError, abort
from services.queue.jobstore import TERMINAL
from services.queue.kinds import JobKind
from tessera.v1 import (
    images_pb2,
    images_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
    text_pb2,
    text_pb2_grpc,
    understanding_pb2,
    understanding_pb2_grpc,
)

log = logging.getLogger("tessera.gateway")


def _deadline(ctx: grpc.aio.ServicerContext) -> float | None:
    remaining = ctx.time_remaining()
    return remaining if remaining is not None and remaining < 10 * 86400 else None


@contextlib.asynccontextmanager
async def _handled(plane: DataPlane, name: str, ctx: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """Counts the call by status code and turns RpcError into a rich gRPC status."""
    code = "OK"
    try:
        yield
    except RpcError as err:
        code = err.code.name
        await abort(ctx, err)
    except asyncio.CancelledError:
        code = "CANCELLED"
        raise
    except Exception:
        # A bug here: the traceback goes to the log under the request id, the caller gets that id only.
        code = "INTERNAL"
        log.exception("%s failed (request %s)", name, current_request_id())
        await abort(ctx, RpcError(grpc.StatusCode.INTERNAL, f"internal error; quote request id "
                                                           f"{current_request_id()} to the operator",
                                  reason="INTERNAL"))
    finally:
        plane.metrics.requests.labels(name, code).inc()


def rpc(method: Callable[..., Any]) -> Callable[..., Any]:
    name = method.__name__

    if getattr(method, "_streaming", False):
        @functools.wraps(method)
        async def stream(self: Any, req: Any, ctx: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            async with _handled(self.plane, name, ctx):
                async for msg in method(self, req, ctx):
                    yield msg
        return stream

    @functools.wraps(method)
    async def unary(self: Any, req: Any, ctx: grpc.aio.ServicerContext) -> Any:
        async with _handled(self.plane, name, ctx):
            return await method(self, req, ctx)
    return unary


def streaming(method: Callable[..., Any]) -> Callable[..., Any]:
    method._streaming = True  # type: ignore[attr-defined]
    return method


class _Base:
    def __init__(self, plane: DataPlane, auth: Authenticator) -> None:
        self.plane, self.auth = plane, auth

    def owner(self, ctx: grpc.aio.ServicerContext) -> str:
        return self.auth.owner(ctx.invocation_metadata())


class _JobRunner(_Base):
    """Interactive RPCs: submit a job, then relay its events until its result (or error)."""

    async def _run(self, spec: jobs_pb2.JobSpec, idempotency_key: str,
                   ctx: grpc.aio.ServicerContext) -> AsyncIterator[tuple[str, jobs_pb2.JobEvent]]:
        owner = self.owner(ctx)
        job_id, _ = await self.plane.submit(owner, spec, idempotency_key, _deadline(ctx), field="request")
        ended = False
        try:
            async for ev in self.plane.watch(owner, job_id, check_owner=False):
                kind = ev.WhichOneof("kind")
                if kind == "error":
                    raise error_from_status(ev.error)
                ended = kind == "result"
                yield job_id, ev
        except (asyncio.CancelledError, GeneratorExit):
            # The caller went away (cancelled, deadline passed) before the result: interactive work
            # is not worth finishing, so stop the job and with it the worker's decoding loop. Other
            # failures (e.g. a Redis blip) leave the job running for a retry with the same key.
            if not ended:
                await asyncio.shield(self._cancel_quietly(job_id))
            raise

    async def _cancel_quietly(self, job_id: str) -> None:
        if self.plane.stopping:
            # This gateway is shutting down (a rollout, a scale-in): the caller did not give up, its
            # connection is being closed under it; the job runs on and the client resumes it elsewhere.
            return
        try:
            rec = await self.plane.store.get(job_id)
            if rec is not None and rec.job.state not in TERMINAL:
                await self.plane.store.cancel(job_id, "the client cancelled the request or its deadline passed")
        except Exception:
            pass

    async def _relay(self, kind: JobKind, request: Any, idempotency_key: str, ctx: grpc.aio.ServicerContext,
                     response: Callable[..., Any], payloads: dict[str, str]) -> AsyncIterator[Any]:
        """Run `request` as a job of `kind` and stream `response` messages: the job id first (before any
        payload, so the client can resume or cancel), then each event kind in `payloads` (event kind ->
        response field), then the kind's result as `result`."""
        first = True
        result = kind.result_field
        async for job_id, ev in self._run(kind.spec(request), idempotency_key, ctx):
            kind = ev.WhichOneof("kind")
            if first:
                first = False
                yield response(job_id=job_id, event_id=ev.event_id)
            if kind in payloads:
                yield response(job_id=job_id, event_id=ev.event_id, **{payloads[kind]: getattr(ev, kind)})
            elif kind == "result":
                yield response(job_id=job_id, event_id=ev.event_id, result=getattr(ev.result, result))


class TextGenerationServicer(_JobRunner, text_pb2_grpc.TextGenerationServiceServicer):
    @rpc
    async def Generate(self, req: text_pb2.GenerateRequest, ctx: grpc.aio.ServicerContext) -> Any:
        submitted: list[str] = []
        try:
            job_id, ev = await self.plane.submit_and_wait(self.owner(ctx), JobKind.TEXT.spec(req.request),
                                                          req.idempotency_key, _deadline(ctx), "request",
                                                          submitted.append)
        except asyncio.CancelledError:  # the caller went away: stop its job, as the streaming calls do
            if submitted:
                await asyncio.shield(self._cancel_quietly(submitted[0]))
            raise
        if ev.WhichOneof("kind") == "error":
            raise error_from_status(ev.error)
        if ev.WhichOneof("kind") != "result":
            raise RpcError(grpc.StatusCode.INTERNAL, "job ended without a result")
        return text_pb2.GenerateResponse(job_id=job_id, result=ev.result.text)

    @rpc
    @streaming
    async def GenerateStream(self, req: text_pb2.GenerateStreamRequest,
                             ctx: grpc.aio.ServicerContext) -> AsyncIterator[text_pb2.GenerateStreamResponse]:
        async for msg in self._relay(JobKind.TEXT, req.request, req.idempotency_key, ctx,
                                     text_pb2.GenerateStreamResponse, {"text_chunk": "chunk"}):
            yield msg


class ImageGenerationServicer(_JobRunner, images_pb2_grpc.ImageGenerationServiceServicer):
    @rpc
    @streaming
    async def GenerateImage(self, req: images_pb2.GenerateImageRequest,
                            ctx: grpc.aio.ServicerContext) -> AsyncIterator[images_pb2.GenerateImageResponse]:
        async for msg in self._relay(JobKind.IMAGE, req.request, req.idempotency_key, ctx,
                                     images_pb2.GenerateImageResponse, {"image_progress": "progress"}):
            yield msg

    @rpc
    @streaming
    async def EditImage(self, req: images_pb2.EditImageRequest,
                        ctx: grpc.aio.ServicerContext) -> AsyncIterator[images_pb2.EditImageResponse]:
        async for msg in self._relay(JobKind.EDIT, req.request, req.idempotency_key, ctx,
                                     images_pb2.EditImageResponse, {"image_progress": "progress"}):
            yield msg


class UnderstandingServicer(_JobRunner, understanding_pb2_grpc.UnderstandingServiceServicer):
    @rpc
    @streaming
    async def Understand(self, req: understanding_pb2.UnderstandRequest,
                         ctx: grpc.aio.ServicerContext) -> AsyncIterator[understanding_pb2.UnderstandResponse]:
        async for msg in self._relay(JobKind.UNDERSTAND, req.request, req.idempotency_key, ctx,
                                     understanding_pb2.UnderstandResponse, {"text_chunk": "chunk"}):
            yield msg


class JobServicer(_Base, jobs_pb2_grpc.JobServiceServicer):
    @rpc
    async def SubmitJob(self, req: jobs_pb2.SubmitJobRequest, ctx: grpc.aio.ServicerContext) -> Any:
        owner = self.owner(ctx)
        job_id, created = await self.plane.submit(owner, req.spec, req.idempotency_key)
        return jobs_pb2.SubmitJobResponse(job=await self.plane.get(owner, job_id), created=created)

    @rpc
    async def GetJob(self, req: jobs_pb2.GetJobRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return jobs_pb2.GetJobResponse(job=await self.plane.get(self.owner(ctx), req.job_id))

    @rpc
    @streaming
    async def WatchJob(self, req: jobs_pb2.WatchJobRequest,
                       ctx: grpc.aio.ServicerContext) -> AsyncIterator[jobs_pb2.WatchJobResponse]:
        async for ev in self.plane.watch(self.owner(ctx), req.job_id, req.after_event_id):
            yield jobs_pb2.WatchJobResponse(job_id=req.job_id, event=ev)

    @rpc
    async def CancelJob(self, req: jobs_pb2.CancelJobRequest, ctx: grpc.aio.ServicerContext) -> Any:
        return jobs_pb2.CancelJobResponse(job=await self.plane.cancel(self.owner(ctx), req.job_id))

    @rpc
    async def ListJobs(self, req: jobs_pb2.ListJobsRequest, ctx: grpc.aio.ServicerContext) -> Any:
        jobs, token = await self.plane.list(self.owner(ctx), req.page_size, req.page_token)
        return jobs_pb2.ListJobsResponse(jobs=jobs, next_page_token=token)


class ModelServicer(_Base, models_pb2_grpc.ModelServiceServicer):
    @rpc
    async def ListModels(self, req: models_pb2.ListModelsRequest, ctx: grpc.aio.ServicerContext) -> Any:
        if self.plane.catalog is None:
            raise RpcError(grpc.StatusCode.UNAVAILABLE, "the model catalog is not running")
        return self.plane.catalog.list()
