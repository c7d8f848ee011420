"""Prometheus metrics of the gateway and dispatchers (names `tessera_*`, units in the names).

The queue gauges (depth, oldest job age, in flight) are what autoscaling reads: KEDA/HPA for the
gateway and dispatchers, and the Ray Serve autoscaler's queue-aware policy for the workers.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

_LATENCY = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
_CHUNK = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.queue_depth = Gauge("tessera_queue_depth_jobs", "Jobs waiting for a dispatcher", ["service"], registry=r)
        self.oldest_age = Gauge("tessera_queue_oldest_job_age_seconds", "Age of the oldest waiting job",
                                ["service"], registry=r)
        self.in_flight = Gauge("tessera_jobs_in_flight", "Jobs being run by dispatchers", ["service"], registry=r)
        self.jobs = Counter("tessera_jobs_total", "Jobs by final state", ["service", "state"], registry=r)
        self.submitted = Counter("tessera_jobs_submitted_total", "Jobs accepted into a queue", ["service"], registry=r)
        self.ttfc = Histogram("tessera_time_to_first_chunk_seconds", "Submission to first text chunk",
                              ["service", "model"], buckets=_LATENCY, registry=r)
        self.inter_chunk = Histogram("tessera_inter_chunk_latency_seconds", "Gap between consecutive chunks",
                                     ["service", "model"], buckets=_CHUNK, registry=r)
        self.e2e = Histogram("tessera_job_duration_seconds", "Submission to final result", ["service", "model"],
                             buckets=_LATENCY, registry=r)
        self.queue_wait = Histogram("tessera_queue_wait_seconds", "Submission to dispatch", ["service"],
                                    buckets=_LATENCY, registry=r)
        self.tokens = Counter("tessera_generated_tokens_total", "Generated tokens", ["model"], registry=r)
        self.tpf = Histogram("tessera_tokens_per_forward", "Tokens committed per model forward pass, per job",
                             ["model"], buckets=(1, 1.5, 2, 3, 4, 6, 8, 12, 16, 32), registry=r)
        self.requests = Counter("tessera_grpc_requests_total", "Gateway RPCs by method and status code",
                                ["method", "code"], registry=r)
        self.attempts = Counter("tessera_job_retries_total", "Dispatch attempts beyond the first", ["service"],
                                registry=r)
        self.dead_letters = Counter("tessera_dead_letters_total", "Jobs moved to the dead-letter stream",
                                    ["service"], registry=r)
        self.images = Counter("tessera_images_generated_total", "Images returned by image jobs",
                              ["model", "kind"], registry=r)
        self.seconds_per_image = Histogram("tessera_seconds_per_image",
                                           "Worker model-call seconds per image (batched call / batch size)",
                                           ["model"], buckets=_LATENCY, registry=r)
        self.redis_up = Gauge("tessera_redis_up", "1 when the job store answered the last poll", registry=r)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
