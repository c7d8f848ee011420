"""The understanding family: UnderstandingWorkerService (image + question -> answer) over the
understanding engine, which maps its requests onto micro-batched Orthus calls (engine.py)."""

from __future__ import annotations

from typing import Any

from services.workers.family import Family, ReplicaLimits, Rpc
from services.workers.metrics import WorkerMetrics
from services.workers.protocol import WorkerEngine
from services.workers.understanding.config import UnderstandingArgs
from tessera.worker.v1.worker_pb2 import UnderstandResponse


class AnswerObserver:
    """Answer tokens streamed to callers."""

    def __init__(self, metrics: WorkerMetrics, method: str, request: Any) -> None:
        self.metrics = metrics

    def on_message(self, msg: UnderstandResponse) -> None:
        if msg.token_count:
            self.metrics.tokens.inc(msg.token_count)

    def on_end(self) -> None:
        pass


def _engine(args: UnderstandingArgs, limits: ReplicaLimits) -> WorkerEngine:
    from services.workers.understanding.engine import UnderstandingEngine  # the model loads in the replica only

    return UnderstandingEngine(args)


UNDERSTANDING = Family(
    name="understanding", service="UnderstandingWorkerService", deployment="UnderstandingWorker",
    args=UnderstandingArgs, engine=_engine, rpcs={"Understand": Rpc("understand", observe=AnswerObserver)},
)
