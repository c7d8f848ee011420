"""The image family: ImageWorkerService (text-to-image and editing) over the image engine, which maps
its requests onto micro-batched Orthus or NextStep calls (engine.py)."""

from __future__ import annotations

from typing import Any

from services.workers.family import Family, ReplicaLimits, Rpc
from services.workers.image.config import ImageArgs
from services.workers.metrics import WorkerMetrics
from services.workers.protocol import WorkerEngine
from tessera.worker.v1.worker_pb2 import EditImageResponse, GenerateImageResponse


class ImageObserver:
    """Images returned, and each one's share of its batched model call."""

    def __init__(self, metrics: WorkerMetrics, method: str, request: Any) -> None:
        self.metrics, self.tags = metrics, {"method": method}

    def on_message(self, msg: GenerateImageResponse | EditImageResponse) -> None:
        if msg.WhichOneof("event") == "output":
            out = msg.output
            self.metrics.images.inc(tags=self.tags)
            self.metrics.seconds_per_image.observe(out.generate_s / max(1, out.batch_size), tags=self.tags)
            self.metrics.batch_size.observe(out.batch_size, tags=self.tags)

    def on_end(self) -> None:
        pass


def _engine(args: ImageArgs, limits: ReplicaLimits) -> WorkerEngine:
    from services.workers.image.engine import ImageEngine  # torch and the model load in the replica only

    return ImageEngine(args)


IMAGE = Family(
    name="image", service="ImageWorkerService", deployment="ImageWorker", args=ImageArgs, engine=_engine,
    rpcs={"GenerateImage": Rpc("generate", observe=ImageObserver), "EditImage": Rpc("edit", observe=ImageObserver)},
    stats=("batch_sizes",),
)
