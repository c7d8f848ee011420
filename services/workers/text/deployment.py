"""The text worker's Ray Serve deployment and its builder.

`TextWorker` is a plain class; `build_text_worker` applies `serve.deployment` with the options
from config (services.workers.serving.build_app), so placement and scaling never live in code.
Ray Serve's gRPC proxy routes each TextWorkerService RPC to the method of the same name; an
async generator method serves the server-streaming GenerateText.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import metrics
from ray.serve.grpc_util import RayServegRPCContext

from services.workers.protocol import TextEngineProtocol
from services.workers.serving import (
    TEXT_SERVICER,
    CancellableWorker,
    RpcMetrics,
    WorkerApp,
    build_app,
    handled_stream,
)
from services.workers.text.config import TextWorkerConfig, load_config
from services.workers.text.engine import LocalTextEngine
from tessera.worker.v1.worker_pb2 import (
    DescribeTextRequest,
    DescribeTextResponse,
    GenerateTextRequest,
    GenerateTextResponse,
)

TOKENS_PER_FORWARD_BUCKETS = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]


class TokenMetrics:
    """Text-specific per-replica metrics (latency and errors are the shared RpcMetrics)."""

    def __init__(self, model: str) -> None:
        tags = ("model",)
        self.tokens = metrics.Counter("tessera_worker_generated_tokens",
                                      description="Tokens streamed to callers.", tag_keys=tags)
        self.forwards = metrics.Counter("tessera_worker_forward_passes",
                                        description="Model forward passes run by generations.", tag_keys=tags)
        self.tokens_per_forward = metrics.Histogram(
            "tessera_worker_tokens_per_forward", description="Tokens decoded per forward pass, per request.",
            boundaries=TOKENS_PER_FORWARD_BUCKETS, tag_keys=tags)
        for m in (self.tokens, self.forwards, self.tokens_per_forward):
            m.set_default_tags({"model": model})

    def record(self, tokens: int, skipped: int, last: GenerateTextResponse | None) -> None:
        if tokens:
            self.tokens.inc(tokens)
        if last is not None and last.forward_passes:
            self.forwards.inc(last.forward_passes)
            if last.finished:  # a resumed job decoded its skipped tokens too
                self.tokens_per_forward.observe((tokens + skipped) / last.forward_passes)


class TextWorker(CancellableWorker):
    """Serves TextWorkerService over one text engine."""

    # Ray Serve awaits an async constructor; the engine loads the model here.
    async def __init__(self, config: TextWorkerConfig | Mapping[str, Any]) -> None:  # type: ignore[misc]
        self.config = load_config(config)
        self.engine: TextEngineProtocol = LocalTextEngine(
            self.config.model, max_concurrency=self.config.deployment.max_ongoing_requests)
        await self.engine.start()
        self.rpc_metrics = RpcMetrics(self.config.model.name)
        self.token_metrics = TokenMetrics(self.config.model.name)
        self._start_calls()

    async def GenerateText(  # named exactly like the RPC: Serve routes by name
        self, request: GenerateTextRequest, grpc_context: RayServegRPCContext | None = None,
    ) -> AsyncIterator[GenerateTextResponse]:
        seen: list[GenerateTextResponse] = []
        tokens = 0

        def count(msg: GenerateTextResponse) -> None:
            nonlocal tokens
            tokens += msg.token_count
            seen[:] = [msg]

        try:
            async for msg in handled_stream(self.engine.generate(request), "GenerateText", self.rpc_metrics,
                                            self.calls, grpc_context, count):
                yield msg
        finally:
            last = seen[0] if seen else None
            self.token_metrics.record(tokens, request.skip_tokens if last else 0, last)

    async def DescribeText(
        self, request: DescribeTextRequest, grpc_context: RayServegRPCContext | None = None,
    ) -> DescribeTextResponse:
        return self.engine.describe()

    async def check_health(self) -> None:
        await self.engine.check_health()

    def job_stats(self, job_id: str) -> dict[str, Any] | None:
        """Forward passes and state of a recent job (via a DeploymentHandle; not an RPC)."""
        return self.engine.job_stats(job_id) if isinstance(self.engine, LocalTextEngine) else None

    async def __del__(self) -> None:
        # Serve awaits this on graceful shutdown.
        await self.calls.stop()
        await self.engine.shutdown()


TEXT_APP = WorkerApp("text", TEXT_SERVICER, TextWorker)


def build_text_worker(config: TextWorkerConfig | Mapping[str, Any] | str | Path | None = None) -> serve.Application:
    """The text worker application, deployment options from config (None = config.yaml)."""
    return build_app(TEXT_APP, load_config(config))
