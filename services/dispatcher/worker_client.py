"""gRPC client from a dispatcher to a worker application behind Ray Serve's gRPC proxy.

Every call carries a call id (`tessera-call-id` metadata). A call the dispatcher gives up on (job
cancelled, deadline passed, attempt lost) is cancelled on the channel and also named to the
application's WorkerControlService.CancelCall, because Ray Serve's proxy does not always pass a
cancellation on to the replica (services/workers/cancellation.py says when).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from services.workers.protocol import CALL_ID_METADATA, WORKER_FAILURE_PREFIX, token_metadata
from tessera.v1 import images_pb2, text_pb2, understanding_pb2
from tessera.worker.v1 import worker_pb2, worker_pb2_grpc

log = logging.getLogger(__name__)
CANCEL_TIMEOUT_S = 5.0
# Codes with which the caller's side ended a call, not the worker: it may still be running there.
_ENDED_BY_CALLER = {grpc.StatusCode.CANCELLED, grpc.StatusCode.DEADLINE_EXCEEDED}

# Worker failures worth another attempt on another replica: the replica or the transport failed
# (Serve answers INTERNAL when a replica dies mid-call). The rest are the request's fault, and so is an
# INTERNAL the worker marked as its engine's failure on this request (WORKER_FAILURE_PREFIX).
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}


def new_call_id() -> str:
    return os.urandom(8).hex()


class WorkerError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE and not self.message.startswith(WORKER_FAILURE_PREFIX)

    @property
    def reason(self) -> str:
        """What a client may read: the worker's own message without its mark."""
        return self.message.removeprefix(WORKER_FAILURE_PREFIX)


@dataclass(slots=True)
class StartedCall:
    """A worker call already on its way, and its messages (WorkerError on failure)."""

    stream: AsyncIterator[Any]
    cancel: Callable[[], None]  # give the call up: cancelled here and on the worker, unless it has ended
    call_id: str


class WorkerClient:
    """One Serve application (chosen by the `application` metadata) behind the proxy at `address`."""

    def __init__(self, address: str, application: str) -> None:
        self.address, self.application = address, application
        # Serve's proxy picks the app by `application`; the token is the worker API's credential.
        self._metadata = (("application", application), *token_metadata())
        self.channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
        self.text = worker_pb2_grpc.TextWorkerServiceStub(self.channel)
        self.image = worker_pb2_grpc.ImageWorkerServiceStub(self.channel)
        self.understanding = worker_pb2_grpc.UnderstandingWorkerServiceStub(self.channel)
        self.control = worker_pb2_grpc.WorkerControlServiceStub(self.channel)
        self._cancels: set[asyncio.Task[None]] = set()  # CancelCall RPCs in flight

    def _start(self, method: Any, request: Any, job_id: str, timeout: float | None, call_id: str = "") -> StartedCall:
        call_id = call_id or new_call_id()
        call = method(request, timeout=timeout, metadata=(*self._md, (CALL_ID_METADATA, call_id)))
        given_up = False

        def give_up() -> None:  # once per call, however many ways it gets abandoned
            nonlocal given_up
            if not given_up:
                given_up = True
                call.cancel()
                self.cancel_on_worker(call_id, job_id)

        def abandon() -> None:
            if not call.done():
                give_up()

        return StartedCall(self._relay(call, give_up), abandon, call_id)

    @staticmethod
    async def _relay(call: Any, give_up: Callable[[], None]) -> AsyncIterator[Any]:
        ended = False  # the worker ended the call: finished, or failed with a status of its own
        try:
            async for msg in call:
                yield msg
            ended = True
        except grpc.aio.AioRpcError as e:
            ended = e.code() not in _ENDED_BY_CALLER
            raise WorkerError(e.code(), e.details() or "") from e
        finally:
            if not ended:  # cancelled, deadline passed, or the reader stopped early
                give_up()

    def cancel_on_worker(self, call_id: str, job_id: str) -> None:
        """Name a call to the worker application's CancelCall, in the background."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # a generator finalized outside the loop: the channel cancel must do
            return
        task = loop.create_task(self._send_cancel(call_id, job_id))
        self._cancels.add(task)
        task.add_done_callback(self._cancels.discard)

    async def _send_cancel(self, call_id: str, job_id: str) -> None:
        try:
            await self.control.CancelCall(worker_pb2.CancelCallRequest(call_id=call_id, job_id=job_id),
                                          timeout=CANCEL_TIMEOUT_S, metadata=self._md)
        except grpc.aio.AioRpcError as e:
            # UNIMPLEMENTED: a worker without Serve's proxy in front (its channel cancel suffices).
            log.debug("CancelCall %s (job %s): %s", call_id, job_id, e.code().name)

    @property
    def _md(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def describe_text(self, timeout: float) -> worker_pb2.DescribeTextResponse:
        """The text app's models and limits (TextWorkerService.DescribeText)."""
        return await self.text.DescribeText(worker_pb2.DescribeTextRequest(), timeout=timeout, metadata=self._md)

    async def count_tokens(self, model: str, prompt: str, timeout: float,
                           raw_prompt: bool = False) -> worker_pb2.CountTokensResponse:
        """Positions a prompt takes in the text app's prompt format, or as is when raw_prompt
        (TextWorkerService.CountTokens)."""
        req = worker_pb2.CountTokensRequest(model=model, prompt=prompt, raw_prompt=raw_prompt)
        return await self.text.CountTokens(req, timeout=timeout, metadata=self._md)

    def start_generate(self, job_id: str, req: text_pb2.TextRequest, skip_tokens: int,
                       timeout: float | None, call_id: str = "") -> StartedCall:
        """Start the text call now (a grpc.aio call is on its way once created); read it later."""
        p = req.params
        wreq = worker_pb2.GenerateTextRequest(
            job_id=job_id, model=req.model, prompt=req.prompt, max_tokens=p.max_tokens, temperature=p.temperature,
            top_p=p.top_p, block_size=p.block_size, skip_tokens=skip_tokens, raw_prompt=p.raw_prompt)
        for name in ("seed", "tau_add", "tau_act", "tau_conf"):
            if p.HasField(name):
                setattr(wreq, name, getattr(p, name))
        return self._start(self.text.GenerateText, wreq, job_id, timeout, call_id)

    async def generate(self, job_id: str, req: text_pb2.TextRequest, skip_tokens: int,
                       timeout: float | None, call_id: str = "") -> AsyncIterator[worker_pb2.GenerateTextResponse]:
        async for msg in self.start_generate(job_id, req, skip_tokens, timeout, call_id).stream:
            yield msg

    async def generate_image(self, job_id: str, req: images_pb2.ImageRequest, timeout: float | None,
                             call_id: str = "") -> AsyncIterator[worker_pb2.GenerateImageResponse]:
        wreq = worker_pb2.GenerateImageRequest(job_id=job_id, model=req.model, prompt=req.prompt,
                                               sampling=_sampling(req.params))
        async for msg in self._start(self.image.GenerateImage, wreq, job_id, timeout, call_id).stream:
            yield msg

    async def edit_image(self, job_id: str, req: images_pb2.ImageEditRequest,
                         timeout: float | None, call_id: str = "") -> AsyncIterator[worker_pb2.EditImageResponse]:
        wreq = worker_pb2.EditImageRequest(job_id=job_id, model=req.model, image=req.image,
                                           instruction=req.instruction, sampling=_sampling(req.params))
        async for msg in self._start(self.image.EditImage, wreq, job_id, timeout, call_id).stream:
            yield msg

    async def understand(self, job_id: str, req: understanding_pb2.UnderstandingRequest, skip_tokens: int,
                         timeout: float | None, call_id: str = "") -> AsyncIterator[worker_pb2.UnderstandResponse]:
        wreq = worker_pb2.UnderstandRequest(job_id=job_id, model=req.model, image=req.image, question=req.question,
                                            max_tokens=req.max_tokens, skip_tokens=skip_tokens)
        async for msg in self._start(self.understanding.Understand, wreq, job_id, timeout, call_id).stream:
            yield msg

    async def close(self) -> None:
        if self._cancels:  # let the cancellations just sent reach the worker
            await asyncio.wait(set(self._cancels), timeout=CANCEL_TIMEOUT_S)
        await self.channel.close()


def _sampling(p: images_pb2.ImageParams) -> worker_pb2.ImageSampling:
    s = worker_pb2.ImageSampling(width=p.width, height=p.height, steps=p.steps, guidance_scale=p.guidance_scale,
                                 image_guidance_scale=p.image_guidance_scale, preview=p.preview)
    if p.HasField("seed"):
        s.seed = p.seed
    return s
