"""Prometheus metrics of the gateway and dispatchers (names `tessera_*`, units in the names).

The queue gauges (depth, oldest job age, in flight) are what autoscaling reads: KEDA/HPA for the
gateway and dispatchers, and the Ray Serve autoscaler's queue-aware policy for the workers.
"""

from __future__ import annotations

import asyncio
import logging

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.common.jobstore import GROUP, JobStore, now_ms

log = logging.getLogger(__name__)

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

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        start_http_server(port, addr=host, registry=self.registry)


async def poll_queues(store: JobStore, metrics: Metrics, services: list[str], interval_s: float = 2.0) -> None:
    """Refresh queue depth and oldest-job age from Redis, forever."""
    while True:
        try:
            for svc in services:
                depth, age = await queue_stats(store, svc)
                metrics.queue_depth.labels(svc).set(depth)
                metrics.oldest_age.labels(svc).set(age)
            metrics.redis_up.set(1)
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as e:
            metrics.redis_up.set(0)
            log.debug("queue poll failed: %s", e)
        except aioredis.ResponseError as e:  # e.g. NOGROUP before the first dispatcher starts
            log.debug("queue poll: %s", e)
        await asyncio.sleep(interval_s)


async def queue_stats(store: JobStore, service: str) -> tuple[int, float]:
    """(jobs waiting, age in seconds of the oldest waiting job) for one service queue."""
    q = store.queue_key(service)
    length = await store.r.xlen(q)
    if not length:
        return 0, 0.0
    groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
              for g in await store.r.xinfo_groups(q)}
    g = groups.get(GROUP)
    last = (g["last-delivered-id"] if g else b"0-0")
    last = last.decode() if isinstance(last, bytes) else last
    pending = int(g["pending"]) if g else 0
    waiting = max(0, length - pending)
    if not waiting:
        return 0, 0.0
    first = await store.r.xrange(q, min=f"({last}", count=1)
    if not first:
        return waiting, 0.0
    ms = int(first[0][0].decode().split("-")[0])
    return waiting, max(0.0, (now_ms() - ms) / 1000)
