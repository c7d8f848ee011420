"""The gateway process: grpc.aio server (auth, health, reflection), metrics, and dispatchers.

`python -m services.gateway [--config services/gateway/config.yaml]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.aio import cancel_all
from services.common.metrics import Metrics
from services.dispatcher.dispatcher import dispatch_all, worker_clients
from services.dispatcher.worker_client import WorkerClient
from services.gateway.auth import Authenticator, AuthInterceptor
from services.gateway.completions import Completions
from services.gateway.config import GatewayConfig
from services.gateway.dataplane import DataPlane
from services.gateway.servicers import (
    ImageGenerationServicer,
    JobServicer,
    TextGenerationServicer,
    UnderstandingServicer,
)
from services.queue.jobstore import JobStore
from services.queue.kinds import Service
from tessera.v1 import (
    images_pb2,
    images_pb2_grpc,
    jobs_pb2,
    jobs_pb2_grpc,
    text_pb2,
    text_pb2_grpc,
    understanding_pb2,
    understanding_pb2_grpc,
)

log = logging.getLogger("tessera.gateway")
SERVICES = tuple(mod.DESCRIPTOR.services_by_name[name].full_name for mod, name in (
    (text_pb2, "TextGenerationService"), (images_pb2, "ImageGenerationService"),
    (understanding_pb2, "UnderstandingService"), (jobs_pb2, "JobService")))


async def poll_queues(store: JobStore, metrics: Metrics, services: list[str], interval_s: float = 2.0) -> None:
    """Refresh the queue gauges (depth, oldest job's age) from Redis, forever: the gateway exports them
    for the autoscalers whether or not it dispatches."""
    while True:
        try:
            for svc in services:
                depth, age = await store.queue_stats(svc)
                metrics.queue_depth.labels(svc).set(depth)
                metrics.oldest_age.labels(svc).set(age)
            metrics.redis_up.set(1)
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as e:
            metrics.redis_up.set(0)
            log.debug("queue poll failed: %s", e)
        except aioredis.ResponseError as e:  # e.g. NOGROUP before the first dispatcher starts
            log.debug("queue poll: %s", e)
        await asyncio.sleep(interval_s)


@dataclass
class Gateway:
    cfg: GatewayConfig
    metrics: Metrics = field(default_factory=Metrics)
    server: grpc.aio.Server | None = None
    port: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    store: JobStore | None = None
    workers: dict[str, WorkerClient] = field(default_factory=dict)
    completions: Completions | None = None

    @property
    def worker(self) -> WorkerClient:
        """The text worker client (tests swap its channel to simulate a dead worker)."""
        return self.workers[Service.TEXT]

    async def start(self, auth: Authenticator | None = None) -> int:
        cfg = self.cfg
        self.store = JobStore.from_url(cfg.redis_url, prefix=cfg.key_prefix, ttl_s=cfg.job_ttl_s)
        auth = auth or Authenticator(cfg.auth)
        self.completions = Completions(self.store)
        self.completions.start()
        plane = DataPlane(cfg, self.store, self.metrics, self.completions)
        self.server = grpc.aio.server(
            interceptors=[AuthInterceptor(auth, lambda m, c: self.metrics.requests.labels(m.rsplit("/", 1)[-1], c)
                                          .inc())],
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
                     ("grpc.so_reuseport", 0)])
        text_pb2_grpc.add_TextGenerationServiceServicer_to_server(TextGenerationServicer(plane, auth), self.server)
        images_pb2_grpc.add_ImageGenerationServiceServicer_to_server(ImageGenerationServicer(plane, auth),
                                                                     self.server)
        understanding_pb2_grpc.add_UnderstandingServiceServicer_to_server(UnderstandingServicer(plane, auth),
                                                                          self.server)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(plane, auth), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        await self.server.start()
        for svc in ("", *SERVICES):
            await self.health.set(svc, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port)
        self.tasks.append(asyncio.create_task(poll_queues(self.store, self.metrics, list(Service))))
        if cfg.dispatcher.enabled:  # one dispatcher per service queue, each with its own window
            self.workers = worker_clients(cfg.dispatcher)
            self.tasks.append(asyncio.create_task(dispatch_all(self.store, cfg.dispatcher, self.metrics,
                                                               self.workers)))
        log.info("gateway listening on %s:%d (metrics :%d)", cfg.host, self.port, cfg.metrics_port)
        return self.port

    async def stop(self) -> None:
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(self.cfg.grace_s)
        await cancel_all(self.tasks)
        if self.completions is not None:
            await self.completions.stop()
        for w in self.workers.values():
            await w.close()
        if self.store is not None:
            await self.store.aclose()


async def serve(cfg: GatewayConfig) -> None:
    gw = Gateway(cfg)
    await gw.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await gw.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description="Tessera gateway")
    ap.add_argument("--config", default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(serve(GatewayConfig.load(args.config)))


if __name__ == "__main__":
    main()
