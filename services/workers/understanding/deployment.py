"""The understanding worker's Ray Serve deployment: UnderstandingWorkerService over one engine."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import metrics
from ray.serve.grpc_util import RayServegRPCContext

from services.workers.serving import (
    UNDERSTANDING_SERVICER,
    CancellableWorker,
    RpcMetrics,
    WorkerApp,
    build_app,
    handled_stream,
)
from services.workers.understanding.config import UnderstandingWorkerConfig, load_config
from services.workers.understanding.engine import UnderstandingEngine
from tessera.worker.v1.worker_pb2 import UnderstandRequest, UnderstandResponse


class UnderstandingWorker(CancellableWorker):
    """Serves UnderstandingWorkerService."""

    async def __init__(self, config: UnderstandingWorkerConfig | Mapping[str, Any]) -> None:  # type: ignore[misc]
        self.config = load_config(config)
        self.engine = UnderstandingEngine(self.config)
        await self.engine.start()
        self.rpc_metrics = RpcMetrics(self.config.model.name)
        self.tokens = metrics.Counter("tessera_worker_generated_tokens", description="Tokens streamed to callers.",
                                      tag_keys=("model",))
        self.tokens.set_default_tags({"model": self.config.model.name})
        self._start_calls()

    def _count(self, msg: UnderstandResponse) -> None:
        if msg.token_count:
            self.tokens.inc(msg.token_count)

    async def Understand(
        self, request: UnderstandRequest, grpc_context: RayServegRPCContext | None = None,
    ) -> AsyncIterator[UnderstandResponse]:
        async for msg in handled_stream(self.engine.understand(request), "Understand", self.rpc_metrics,
                                        self.calls, grpc_context, self._count):
            yield msg

    async def check_health(self) -> None:
        await self.engine.check_health()

    async def __del__(self) -> None:
        await self.calls.stop()
        await self.engine.shutdown()


UNDERSTANDING_APP = WorkerApp("understanding", UNDERSTANDING_SERVICER, UnderstandingWorker)


def build_understanding_worker(config: UnderstandingWorkerConfig | Mapping[str, Any] | str | Path | None = None,
                               ) -> serve.Application:
    return build_app(UNDERSTANDING_APP, load_config(config))
