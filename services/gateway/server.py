"""The gateway process: grpc.aio server (auth, health, reflection), metrics, and dispatchers.

`python -m services.gateway [--config services/gateway/config.yaml]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc
import redis.asyncio as aioredis
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common import logs
from services.common.aio import cancel_all
from services.common.metrics import Metrics
from services.dispatcher.dispatcher import dispatch_all, worker_clients
from services.dispatcher.worker_client import WorkerClient
from services.gateway.auth import Authenticator, AuthInterceptor
from services.gateway.catalog import Catalog
from services.gateway.completions import Completions
from services.gateway.config import GatewayConfig
from services.gateway.dataplane import DataPlane
from services.gateway.requests import RequestInterceptor
from services.gateway.servicers import (
    ImageGenerationServicer,
    JobServicer,
    ModelServicer,
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
    models_pb2,
    models_pb2_grpc,
    text_pb2,
    text_pb2_grpc,
    understanding_pb2,
    understanding_pb2_grpc,
)

log = logging.getLogger("tessera.gateway")
SERVICES = tuple(mod.DESCRIPTOR.services_by_name[name].full_name for mod, name in (
    (text_pb2, "TextGenerationService"), (images_pb2, "ImageGenerationService"),
    (understanding_pb2, "UnderstandingService"), (jobs_pb2, "JobService"), (models_pb2, "ModelService")))


# A health service name that stays SERVING while the process runs, whatever Redis does: what a
# liveness probe asks (readiness asks "", which goes NOT_SERVING while the job store is unreachable,
# so a gateway that cannot enqueue stops getting traffic without being restarted for it).
LIVENESS = "tessera.liveness"


async def poll_queues(store: JobStore, metrics: Metrics, services: list[str], interval_s: float = 2.0,
                      on_redis: Callable[[bool], Awaitable[None]] | None = None) -> None:
    """Refresh the queue gauges (depth, oldest job's age) from Redis, forever: the gateway exports them
    for the autoscalers whether or not it dispatches. While Redis is unreachable the gauges' series are
    removed, not left at their last value (Prometheus then marks them stale, and autoscalers see no
    data instead of a frozen backlog), tessera_redis_up is 0, and `on_redis(False)` is told once."""
    up: bool | None = None
    while True:
        try:
            stats = [(svc, *await store.queue_stats(svc)) for svc in services]
            for svc, depth, age in stats:
                metrics.queue_depth.labels(svc).set(depth)
                metrics.oldest_age.labels(svc).set(age)
            now_up = True
        except (aioredis.ConnectionError, aioredis.TimeoutError, OSError) as e:
            log.debug("queue poll failed: %s", e)
            metrics.queue_depth.clear()
            metrics.oldest_age.clear()
            now_up = False
        except aioredis.ResponseError as e:  # e.g. NOGROUP before the first dispatcher starts
            log.debug("queue poll: %s", e)
            now_up = not str(e).startswith("LOADING")  # Redis replaying its AOF after a restart
        metrics.redis_up.set(1 if now_up else 0)
        if now_up != up:
            if up is not None:
                log.warning("job store (Redis) %s", "reachable again" if now_up else "unreachable")
            up = now_up
            if on_redis is not None:
                await on_redis(now_up)
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
    catalog: Catalog | None = None
    plane: DataPlane | None = None

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
        # The text app's own description (limits, tokenizer), over a client of its own: the dispatchers'
        # clients may not exist (dispatchers in their own processes) or come and go.
        self._describer = WorkerClient(cfg.dispatcher.worker_address, cfg.dispatcher.worker_application)
        self.catalog = Catalog(cfg, self._describer)
        self.catalog.start()
        self.plane = plane = DataPlane(cfg, self.store, self.metrics, self.completions, self.catalog)
        self.server = grpc.aio.server(
            interceptors=[RequestInterceptor(),
                          AuthInterceptor(auth, lambda m, c: self.metrics.requests.labels(m.rsplit("/", 1)[-1], c)
                                          .inc())],
            options=[("grpc.max_receive_message_length", 64 << 20), ("grpc.max_send_message_length", 64 << 20),
                     ("grpc.so_reuseport", 0)])
        text_pb2_grpc.add_TextGenerationServiceServicer_to_server(TextGenerationServicer(plane, auth), self.server)
        images_pb2_grpc.add_ImageGenerationServiceServicer_to_server(ImageGenerationServicer(plane, auth),
                                                                     self.server)
        understanding_pb2_grpc.add_UnderstandingServiceServicer_to_server(UnderstandingServicer(plane, auth),
                                                                          self.server)
        jobs_pb2_grpc.add_JobServiceServicer_to_server(JobServicer(plane, auth), self.server)
        models_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(plane, auth), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection((*SERVICES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server)
        self.port = self.server.add_insecure_port(f"{cfg.host}:{cfg.port}")
        await self.server.start()
        await self._set_serving(True)
        await self.health.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        if cfg.metrics_port:
            self.metrics.serve(cfg.metrics_port, cfg.metrics_host)
        self.tasks.append(asyncio.create_task(poll_queues(self.store, self.metrics, list(Service),
                                                          on_redis=self._set_serving)))
        if cfg.dispatcher.enabled:  # one dispatcher per service queue, each with its own window
            self.workers = worker_clients(cfg.dispatcher)
            self.tasks.append(asyncio.create_task(dispatch_all(self.store, cfg.dispatcher, self.metrics,
                                                               self.workers)))
        log.info("gateway listening on %s:%d (metrics :%d)", cfg.host, self.port, cfg.metrics_port)
        return self.port

    async def _set_serving(self, serving: bool) -> None:
        """Every public service (and "") SERVING or NOT_SERVING: readiness follows the job store."""
        status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
        for svc in ("", *SERVICES):
            await self.health.set(svc, status)

    async def stop(self) -> None:
        if self.plane is not None:
            self.plane.stopping = True
        if self.server is not None:
            await self.health.enter_graceful_shutdown()
            await self.server.stop(self.cfg.grace_s)
        await cancel_all(self.tasks)
        if self.completions is not None:
            await self.completions.stop()
        if self.catalog is not None:
            await self.catalog.stop()
            await self._describer.close()
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
    ap.add_argument("--log-format", choices=("json", "text"), default="json",
                    help="json: one object per line with job_id / request_id / call_id fields (default)")
    args = ap.parse_args()
    logs.setup(args.log_format)
    asyncio.run(serve(GatewayConfig.load(args.config)))


if __name__ == "__main__":
    main()
