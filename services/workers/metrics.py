"""Every metric a worker replica exports, defined once (Ray Serve adds deployment, replica and
application tags; Prometheus scrapes them through Ray's metrics agent).

The worker server records latency and errors for every RPC; what a stream's messages mean (tokens,
forward passes, images) is the family's, so each family hands the server a `StreamObserver` per call
(family.py) that records into these.
"""

from __future__ import annotations

from typing import Any, Protocol

from ray.serve import metrics

LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
TOKENS_PER_FORWARD_BUCKETS = [0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0, 16.0, 32.0]
BATCH_BUCKETS = [1, 2, 3, 4, 6, 8, 12, 16, 32]


class StreamObserver(Protocol):
    """Sees one call's response messages, then its end (however it ended)."""

    def on_message(self, msg: Any) -> None: ...

    def on_end(self) -> None: ...


class WorkerMetrics:
    """Per-replica metrics, default-tagged with the model's name."""

    def __init__(self, model: str) -> None:
        m, mm = ("model",), ("model", "method")
        self.latency = metrics.Histogram(
            "tessera_worker_request_latency_seconds", description="Worker RPC wall time, per request.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=mm)
        self.errors = metrics.Counter("tessera_worker_errors", description="Failed or cancelled worker RPCs.",
                                      tag_keys=(*mm, "code"))
        self.tokens = metrics.Counter("tessera_worker_generated_tokens",
                                      description="Tokens streamed to callers.", tag_keys=m)
        self.forwards = metrics.Counter("tessera_worker_forward_passes",
                                        description="Model forward passes run by generations.", tag_keys=m)
        self.tokens_per_forward = metrics.Histogram(
            "tessera_worker_tokens_per_forward", description="Tokens decoded per forward pass, per request.",
            boundaries=TOKENS_PER_FORWARD_BUCKETS, tag_keys=m)
        self.images = metrics.Counter("tessera_worker_images_generated", description="Images returned to callers.",
                                      tag_keys=mm)
        self.seconds_per_image = metrics.Histogram(
            "tessera_worker_seconds_per_image", description="Batched model-call seconds divided by its batch size.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=mm)
        self.batch_size = metrics.Histogram(
            "tessera_worker_image_batch_size", description="Requests per batched model call, per request.",
            boundaries=BATCH_BUCKETS, tag_keys=mm)
        for metric in (self.latency, self.errors, self.tokens, self.forwards, self.tokens_per_forward, self.images,
                       self.seconds_per_image, self.batch_size):
            metric.set_default_tags({"model": model})
