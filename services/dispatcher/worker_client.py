"""gRPC client from a dispatcher to a worker application behind Ray Serve's gRPC proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tessera.v1 import text_pb2
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


class WorkerClient:
    def __init__(self, address: str, application: str) -> None:
        self.address, self.application = address, application
        self.channel = grpc.aio.insecure_channel(address, options=[
            ("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20)])
        self.text = worker_pb2_grpc.TextWorkerServiceStub(self.channel)

    async def generate(self, job_id: str, req: text_pb2.TextRequest, skip_tokens: int,
                       timeout: float | None) -> AsyncIterator[worker_pb2.GenerateTextResponse]:
        p = req.params
        wreq = worker_pb2.GenerateTextRequest(
            job_id=job_id, model=req.model, prompt=req.prompt, max_tokens=p.max_tokens, temperature=p.temperature,
            top_p=p.top_p, block_size=p.block_size, skip_tokens=skip_tokens)
        for name in ("seed", "tau_add", "tau_act", "tau_conf"):
            if p.HasField(name):
                setattr(wreq, name, getattr(p, name))
        call = self.text.GenerateText(wreq, timeout=timeout, metadata=(("application", self.application),))
        try:
            async for msg in call:
                yield msg
        except grpc.aio.AioRpcError as e:
            raise WorkerError(e.code(), e.details() or "") from e
        finally:
            call.cancel()  # no-op when finished; stops the worker when the job was cancelled

    async def close(self) -> None:
        await self.channel.close()
