"""gRPC client from a dispatcher to a worker application behind Ray Serve's gRPC proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc

from tessera.v1 import images_pb2, text_pb2, understanding_pb2
from tessera.worker.v1 import worker_pb2, worker_pb2_grpc

# Worker failures worth another attempt on another replica: the rest are the request's fault.
RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.INTERNAL,
             grpc.StatusCode.UNKNOWN, grpc.StatusCode.ABORTED}


class WorkerError(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code, self.message = code, message

    @property
    def retryable(self) -> bool:
        return self.code in RETRYABLE


@dataclass(slots=True)
class StartedCall:
    """A worker call already on its way, and its messages (WorkerError on failure)."""

    call: Any
    stream: AsyncIterator[Any]

    def cancel(self) -> None:
        self.call.cancel()


class WorkerClient:
    """One Serve application (chosen by the `application` metadata) behind the proxy at `address`."""

    def __init__(self, address: str, application: str) -> None:
        self.address, self.application = address, application
        self.channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
        self.text = worker_pb2_grpc.TextWorkerServiceStub(self.channel)
        self.image = worker_pb2_grpc.ImageWorkerServiceStub(self.channel)
        self.understanding = worker_pb2_grpc.UnderstandingWorkerServiceStub(self.channel)

    async def _relay(self, call: Any) -> AsyncIterator[Any]:
        try:
            async for msg in call:
                yield msg
        except grpc.aio.AioRpcError as e:
            raise WorkerError(e.code(), e.details() or "") from e
        finally:
            call.cancel()  # no-op when finished; stops the worker when the job was cancelled

    @property
    def _md(self) -> tuple[tuple[str, str], ...]:
        return (("application", self.application),)

    def start_generate(self, job_id: str, req: text_pb2.TextRequest, skip_tokens: int,
                       timeout: float | None) -> StartedCall:
        """Start the text call now (a grpc.aio call is on its way once created); read it later."""
        p = req.params
        wreq = worker_pb2.GenerateTextRequest(
            job_id=job_id, model=req.model, prompt=req.prompt, max_tokens=p.max_tokens, temperature=p.temperature,
            top_p=p.top_p, block_size=p.block_size, skip_tokens=skip_tokens)
        for name in ("seed", "tau_add", "tau_act", "tau_conf"):
            if p.HasField(name):
                setattr(wreq, name, getattr(p, name))
        call = self.text.GenerateText(wreq, timeout=timeout, metadata=self._md)
        return StartedCall(call, self._relay(call))

    async def generate(self, job_id: str, req: text_pb2.TextRequest, skip_tokens: int,
                       timeout: float | None) -> AsyncIterator[worker_pb2.GenerateTextResponse]:
        async for msg in self.start_generate(job_id, req, skip_tokens, timeout).stream:
            yield msg

    async def generate_image(self, job_id: str, req: images_pb2.ImageRequest,
                             timeout: float | None) -> AsyncIterator[worker_pb2.GenerateImageResponse]:
        wreq = worker_pb2.GenerateImageRequest(job_id=job_id, model=req.model, prompt=req.prompt,
                                               sampling=_sampling(req.params))
        async for msg in self._relay(self.image.GenerateImage(wreq, timeout=timeout, metadata=self._md)):
            yield msg

    async def edit_image(self, job_id: str, req: images_pb2.ImageEditRequest,
                         timeout: float | None) -> AsyncIterator[worker_pb2.EditImageResponse]:
        wreq = worker_pb2.EditImageRequest(job_id=job_id, model=req.model, image=req.image,
                                           instruction=req.instruction, sampling=_sampling(req.params))
        async for msg in self._relay(self.image.EditImage(wreq, timeout=timeout, metadata=self._md)):
            yield msg

    async def understand(self, job_id: str, req: understanding_pb2.UnderstandingRequest, skip_tokens: int,
                         timeout: float | None) -> AsyncIterator[worker_pb2.UnderstandResponse]:
        wreq = worker_pb2.UnderstandRequest(job_id=job_id, model=req.model, image=req.image, question=req.question,
                                            max_tokens=req.max_tokens, skip_tokens=skip_tokens)
        async for msg in self._relay(self.understanding.Understand(wreq, timeout=timeout, metadata=self._md)):
            yield msg

    async def close(self) -> None:
        await self.channel.close()


def _sampling(p: images_pb2.ImageParams) -> worker_pb2.ImageSampling:
    s = worker_pb2.ImageSampling(width=p.width, height=p.height, steps=p.steps, guidance_scale=p.guidance_scale,
                                 image_guidance_scale=p.image_guidance_scale, preview=p.preview)
    if p.HasField("seed"):
        s.seed = p.seed
    return s
