"""A trivial text worker that echoes the prompt word by word: the stand-in model for measuring the
gateway's own overhead (loadtest.overhead) and for fault tests of the queue plane, where the
interesting part is Redis and the dispatchers, not decoding. It speaks the real worker API.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

from services.workers.protocol import WORKER_FAILURE_PREFIX, call_id_of
from tessera.worker.v1 import worker_pb2, worker_pb2_grpc

ECHO_POSITIONS = 256
ECHO_PROMPT_OVERHEAD = 2  # as if a template wrapped every prompt in two tokens


class EchoTextWorker(worker_pb2_grpc.TextWorkerServiceServicer, worker_pb2_grpc.WorkerControlServiceServicer):
    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.started: list[str] = []  # job ids, in call order
        self.cancelled: list[str] = []  # job ids whose call was cancelled mid-stream
        self.skips: dict[str, int] = {}
        self.call_ids: dict[str, list[str]] = {}  # job id -> call ids (tessera-call-id metadata), in order
        self.cancel_requests: list[tuple[str, str]] = []  # (call id, job id) of each CancelCall
        self.counted = 0  # CountTokens calls
        self.raw_prompts: dict[str, bool] = {}  # job id -> the raw_prompt flag its call arrived with

    async def GenerateText(self, request: worker_pb2.GenerateTextRequest,
                           context: grpc.aio.ServicerContext) -> AsyncIterator[worker_pb2.GenerateTextResponse]:
        self.started.append(request.job_id)
        self.skips[request.job_id] = request.skip_tokens
        self.raw_prompts[request.job_id] = request.raw_prompt
        self.call_ids.setdefault(request.job_id, []).append(call_id_of(context.invocation_metadata()))
        # Scripted failures, as a real worker fails: a refused request, its engine failing on it (marked,
        # not worth a retry), a replica dying mid-call (Serve's unmarked INTERNAL, worth one).
        if request.prompt.startswith("!fail:"):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.prompt[6:])
        if request.prompt.startswith("!modelfail:"):
            await context.abort(grpc.StatusCode.INTERNAL, WORKER_FAILURE_PREFIX + request.prompt[11:])
        if request.prompt.startswith("!crash:"):
            await context.abort(grpc.StatusCode.INTERNAL, f"replica died at ipv4:10.0.0.7:9000 ({request.prompt[7:]})")
        words = request.prompt.split()
        limit = request.max_tokens or len(words)
        words = words[:limit]
        try:
            for i, w in enumerate(words):
                if i < request.skip_tokens:
                    continue
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                yield worker_pb2.GenerateTextResponse(text=(" " if i else "") + w, token_count=1, forward_passes=i + 1)
        except asyncio.CancelledError:
            self.cancelled.append(request.job_id)
            raise
        yield worker_pb2.GenerateTextResponse(
            finished=True, forward_passes=len(words), prompt_tokens=len(words), model=request.model or "echo",
            finish_reason="length" if request.max_tokens and len(request.prompt.split()) > limit else "stop")

    async def CancelCall(self, request: worker_pb2.CancelCallRequest,
                         context: grpc.aio.ServicerContext) -> worker_pb2.CancelCallResponse:
        # Only recorded: on a plain grpc.aio server the channel's cancellation already stopped the call.
        self.cancel_requests.append((request.call_id, request.job_id))
        return worker_pb2.CancelCallResponse(cancelled_here=False)

    async def DescribeText(self, request: worker_pb2.DescribeTextRequest,
                           context: grpc.aio.ServicerContext) -> worker_pb2.DescribeTextResponse:
        return worker_pb2.DescribeTextResponse(models=[worker_pb2.TextModelInfo(
            name="echo", method="echo", max_positions=ECHO_POSITIONS, default_max_tokens=16,
            max_tokens_limit=ECHO_POSITIONS - 1, prompt_overhead_tokens=ECHO_PROMPT_OVERHEAD)])

    async def CountTokens(self, request: worker_pb2.CountTokensRequest,
                          context: grpc.aio.ServicerContext) -> worker_pb2.CountTokensResponse:
        # One token per word, like the echo itself, inside a two-token "template" (none around a raw prompt).
        self.counted += 1
        overhead = 0 if request.raw_prompt else ECHO_PROMPT_OVERHEAD
        return worker_pb2.CountTokensResponse(prompt_tokens=len(request.prompt.split()) + overhead)


async def start_echo_worker(port: int = 0, delay_s: float = 0.0) -> tuple[grpc.aio.Server, int, EchoTextWorker]:
    server = grpc.aio.server()
    worker = EchoTextWorker(delay_s)
    worker_pb2_grpc.add_TextWorkerServiceServicer_to_server(worker, server)
    worker_pb2_grpc.add_WorkerControlServiceServicer_to_server(worker, server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server, port, worker


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--delay-s", type=float, default=0.0)
    a = ap.parse_args()

    async def _main() -> None:
        server, port, _ = await start_echo_worker(a.port, a.delay_s)
        print(f"echo worker on 127.0.0.1:{port}", flush=True)
        await server.wait_for_termination()

    asyncio.run(_main())
