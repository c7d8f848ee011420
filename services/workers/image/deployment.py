"""The image worker's Ray Serve deployment: ImageWorkerService over one ImageEngine.

Serve's gRPC proxy routes GenerateImage / EditImage to the methods of the same name (async
generators: server streaming). `max_ongoing_requests` must leave room for a full batch, or the
micro-batcher never sees enough concurrent requests to fill one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import metrics
from ray.serve.grpc_util import RayServegRPCContext

from services.workers.image.config import ImageWorkerConfig, load_config
from services.workers.image.engine import ImageEngine
from services.workers.serving import (
    IMAGE_SERVICER,
    LATENCY_BUCKETS_S,
    CancellableWorker,
    RpcMetrics,
    WorkerApp,
    build_app,
    handled_stream,
)
from tessera.worker.v1.worker_pb2 import (
    EditImageRequest,
    EditImageResponse,
    GenerateImageRequest,
    GenerateImageResponse,
)

BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 32]


class ImageMetrics:
    """Image-specific per-replica metrics (latency and errors are the shared RpcMetrics)."""

    def __init__(self, model: str) -> None:
        tags = ("model", "method")
        self.images = metrics.Counter("tessera_worker_images_generated", description="Images returned to callers.",
                                      tag_keys=tags)
        self.seconds = metrics.Histogram("tessera_worker_seconds_per_image",
                                         description="Batched model-call seconds divided by its batch size.",
                                         boundaries=LATENCY_BUCKETS_S, tag_keys=tags)
        self.batch = metrics.Histogram("tessera_worker_image_batch_size",
                                       description="Requests per batched model call, per request.",
                                       boundaries=BATCH_BUCKETS, tag_keys=tags)
        for m in (self.images, self.seconds, self.batch):
            m.set_default_tags({"model": model})

    def counter(self, method: str) -> Any:
        def record(msg: GenerateImageResponse | EditImageResponse) -> None:
            if msg.WhichOneof("event") == "output":
                out = msg.output
                self.images.inc(tags={"method": method})
                self.seconds.observe(out.generate_s / max(1, out.batch_size), tags={"method": method})
                self.batch.observe(out.batch_size, tags={"method": method})
        return record


class ImageWorker(CancellableWorker):
    """Serves ImageWorkerService."""

    async def __init__(self, config: ImageWorkerConfig | Mapping[str, Any]) -> None:  # type: ignore[misc]
        self.config = load_config(config)
        self.engine = ImageEngine(self.config)
        await self.engine.start()
        self.rpc_metrics = RpcMetrics(self.config.model.name)
        self.image_metrics = ImageMetrics(self.config.model.name)
        self._start_calls()

    async def GenerateImage(
        self, request: GenerateImageRequest, grpc_context: RayServegRPCContext | None = None,
    ) -> AsyncIterator[GenerateImageResponse]:
        async for msg in handled_stream(self.engine.generate(request), "GenerateImage", self.rpc_metrics,
                                        self.calls, grpc_context, self.image_metrics.counter("GenerateImage")):
            yield msg

    async def EditImage(
        self, request: EditImageRequest, grpc_context: RayServegRPCContext | None = None,
    ) -> AsyncIterator[EditImageResponse]:
        async for msg in handled_stream(self.engine.edit(request), "EditImage", self.rpc_metrics,
                                        self.calls, grpc_context, self.image_metrics.counter("EditImage")):
            yield msg

    async def check_health(self) -> None:
        await self.engine.check_health()

    def batch_sizes(self) -> list[int]:
        """Sizes of recent batched model calls (via a DeploymentHandle; not an RPC)."""
        return list(self.engine.batcher.batches)

    async def __del__(self) -> None:
        await self.calls.stop()
        await self.engine.shutdown()


IMAGE_APP = WorkerApp("image", IMAGE_SERVICER, ImageWorker)


def build_image_worker(config: ImageWorkerConfig | Mapping[str, Any] | str | Path | None = None,
                       ) -> serve.Application:
    """The image worker application, deployment options from config (None = config.yaml)."""
    return build_app(IMAGE_APP, load_config(config))
