"""The text family: TextWorkerService over the D2F text engine (engine.py maps its requests)."""

from __future__ import annotations

from services.workers.family import Family, ReplicaLimits, Rpc
from services.workers.metrics import WorkerMetrics
from services.workers.protocol import WorkerEngine
from services.workers.text.config import TextArgs
from tessera.worker.v1.worker_pb2 import GenerateTextRequest, GenerateTextResponse


class TextObserver:
    """Tokens streamed, forward passes, and tokens per forward of a finished generation."""

    def __init__(self, metrics: WorkerMetrics, method: str, request: GenerateTextRequest) -> None:
        self.metrics, self.request = metrics, request
        self.tokens = 0
        self.last: GenerateTextResponse | None = None

    def on_message(self, msg: GenerateTextResponse) -> None:
        self.tokens += msg.token_count
        self.last = msg

    def on_end(self) -> None:
        if self.tokens:
            self.metrics.tokens.inc(self.tokens)
        last = self.last
        if last is not None and last.forward_passes:
            self.metrics.forwards.inc(last.forward_passes)
            if last.finished:  # a resumed job decoded its skipped tokens too
                self.metrics.tokens_per_forward.observe((self.tokens + self.request.skip_tokens) / last.forward_passes)


def _engine(args: TextArgs, limits: ReplicaLimits) -> WorkerEngine:
    from services.workers.text.engine import LocalTextEngine  # torch and the model load in the replica only

    # Every call Serve may route here at once decodes in the same batch (the engine's max_num_seqs).
    return LocalTextEngine(args.model, max_concurrency=limits.max_ongoing_requests)


TEXT = Family(
    name="text", service="TextWorkerService", deployment="TextWorker", args=TextArgs, engine=_engine,
    rpcs={"GenerateText": Rpc("generate", observe=TextObserver), "DescribeText": Rpc("describe", streaming=False),
          "CountTokens": Rpc("count_tokens", streaming=False)},
    stats=("job_stats",),
)
