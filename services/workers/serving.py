"""Ray Serve plumbing every worker shares: the builder, the gRPC proxy start-up, per-RPC metrics and
error mapping, and the `python -m services.workers.<name>` entry point.

Serve's gRPC proxy is configured once per cluster, so it is always started with every worker
servicer (`ALL_SERVICERS`): any worker can then be deployed onto a running Serve, in any order.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TypeVar

import grpc
import ray
from ray import serve
from ray.serve import metrics
from ray.serve.config import HTTPOptions, gRPCOptions
from ray.serve.grpc_util import RayServegRPCContext

from services.common.serve_options import DeploymentOptions
from services.workers.base import REPO_ROOT
from services.workers.cancellation import CallRegistry
from services.workers.protocol import InvalidRequestError, call_id_of
from tessera.worker.v1.worker_pb2 import CancelCallRequest, CancelCallResponse

_PB = "tessera.worker.v1.worker_pb2_grpc"
TEXT_SERVICER = f"{_PB}.add_TextWorkerServiceServicer_to_server"
IMAGE_SERVICER = f"{_PB}.add_ImageWorkerServiceServicer_to_server"
UNDERSTANDING_SERVICER = f"{_PB}.add_UnderstandingWorkerServiceServicer_to_server"
CONTROL_SERVICER = f"{_PB}.add_WorkerControlServiceServicer_to_server"  # every worker app serves it
ALL_SERVICERS = (TEXT_SERVICER, IMAGE_SERVICER, UNDERSTANDING_SERVICER, CONTROL_SERVICER)
LATENCY_BUCKETS_S = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]

log = logging.getLogger(__name__)
T = TypeVar("T")


class _ModelSection(Protocol):
    name: str

    @property
    def path(self) -> Path: ...


class ServableConfig(Protocol):
    """What the shared start-up needs from a worker config."""

    @property
    def model(self) -> _ModelSection: ...

    @property
    def deployment(self) -> DeploymentOptions: ...


@dataclass(frozen=True, slots=True)
class WorkerApp:
    """One worker application on Serve: callers pick it with metadata ("application", name)."""

    name: str
    servicer: str
    deployment_cls: type

    @property
    def route_prefix(self) -> str:
        # Must not be None: the gRPC proxy only finds apps that have one.
        return f"/{self.name}"


def build_app(app: WorkerApp, cfg: ServableConfig) -> serve.Application:
    """The app with deployment options from config (the Ray Serve LLM builder pattern): placement and
    scaling never live in code."""
    return serve.deployment(app.deployment_cls, **cfg.deployment.to_serve_kwargs()).bind(cfg)


def lenient_proxy_checks() -> dict[str, str]:
    """Serve kills a proxy that misses 3 readiness checks of 5 s; on a busy laptop or CI box a fresh
    proxy can take longer to import, and serve.start then fails after 60 s. Raise both timeouts to
    30 s unless set already. The raylet (and so the Serve controller) inherits them from this
    process, so call it before ray.init; returns them for a runtime_env too."""
    for k in _PROXY_CHECK_ENV:
        os.environ.setdefault(k, "30")
    return {k: os.environ[k] for k in _PROXY_CHECK_ENV}


_PROXY_CHECK_ENV = ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S")


def ensure_serve(grpc_port: int, http_port: int, *, num_cpus: int | None = None, check_path: Path | None = None,
                 servicers: Sequence[str] = ALL_SERVICERS) -> None:
    """Connect to (or start) Ray and make sure Serve runs with its gRPC proxy on `grpc_port` serving
    `servicers`. Connects to RAY_ADDRESS or an initialized Ray, else starts a local one."""
    if not ray.is_initialized():
        env = {}
        if not os.environ.get("RAY_ADDRESS"):
            if check_path is not None and not check_path.exists():  # fail now, not after Serve's retries
                raise FileNotFoundError(f"model dir {check_path} does not exist (is the checkpoint trained yet?)")
            # Local cluster: make `models`/`services` importable in replicas whatever the cwd.
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
            lenient_proxy_checks()
        ray.init(num_cpus=num_cpus, runtime_env={"env_vars": env} if env else None)
    serve.start(http_options=HTTPOptions(host="0.0.0.0", port=http_port),
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=list(servicers)))


def check_grpc_options(grpc_port: int, servicer: str) -> None:
    # serve.start ignores new gRPC options when Serve already runs, and the RPCs would then fail
    # with UNIMPLEMENTED; fail here with the reason instead.
    from ray.serve.context import _get_global_client

    current: gRPCOptions = ray.get(_get_global_client()._controller.get_grpc_config.remote())
    missing = [s for s in (servicer, CONTROL_SERVICER) if s not in current.grpc_servicer_functions]
    if missing or current.port != grpc_port:
        raise RuntimeError(f"Serve is already running with gRPC port {current.port} and servicers "
                           f"{current.grpc_servicer_functions}; this worker needs port {grpc_port} with "
                           f"{', '.join(missing or [servicer])}. Restart Serve (serve.shutdown()) or start it "
                           "with all of ALL_SERVICERS.")


def start_worker(app: WorkerApp, cfg: ServableConfig, grpc_port: int = 9000, http_port: int = 8000, *,
                 num_cpus: int | None = None, servicers: Sequence[str] = ALL_SERVICERS) -> None:
    """Deploy one worker app and return once its replicas are up."""
    ensure_serve(grpc_port, http_port, num_cpus=num_cpus, check_path=cfg.model.path, servicers=servicers)
    check_grpc_options(grpc_port, app.servicer)
    serve.run(build_app(app, cfg), name=app.name, route_prefix=app.route_prefix)
    log.info("%s worker %r serving %s on gRPC port %d", app.name, cfg.deployment.name, cfg.model.name, grpc_port)


class RpcMetrics:
    """Per-replica metrics every worker RPC records; Serve adds deployment/replica/application tags."""

    def __init__(self, model: str) -> None:
        self.latency = metrics.Histogram(
            "tessera_worker_request_latency_seconds", description="Worker RPC wall time, per request.",
            boundaries=LATENCY_BUCKETS_S, tag_keys=("model", "method"))
        self.errors = metrics.Counter("tessera_worker_errors", description="Failed or cancelled worker RPCs.",
                                      tag_keys=("model", "method", "code"))
        for m in (self.latency, self.errors):
            m.set_default_tags({"model": model})


class CancellableWorker:
    """Mixin of every worker deployment: serves WorkerControlService.CancelCall over the replica's
    running calls (`self.calls`, which `handled_stream` fills). Call `_start_calls()` in __init__."""

    calls: CallRegistry

    def _start_calls(self) -> None:
        self.calls = CallRegistry()
        self.calls.start()

    async def CancelCall(  # named exactly like the RPC: Serve routes by name
        self, request: CancelCallRequest, grpc_context: RayServegRPCContext | None = None,
    ) -> CancelCallResponse:
        return CancelCallResponse(cancelled_here=await self.calls.cancel(request.call_id, request.job_id))


async def handled_stream(stream: AsyncIterator[T], method: str, rpc_metrics: RpcMetrics, calls: CallRegistry,
                         grpc_context: RayServegRPCContext | None,
                         on_message: Callable[[T], None] | None = None) -> AsyncIterator[T]:
    """Relay an engine's stream as a Serve streaming RPC: INVALID_ARGUMENT for requests the engine refuses,
    latency and error counts by code, and the engine's generator closed however the call ends (closing it
    is what stops the model work when the caller cancels). While it runs, the call is in `calls` under
    its call id, for WorkerControlService.CancelCall."""
    started, code = time.perf_counter(), None
    call_id = call_id_of(grpc_context.invocation_metadata()) if grpc_context is not None else ""
    try:
        with calls.track(call_id):
            async with contextlib.aclosing(stream) as s:  # type: ignore[type-var]
                async for msg in s:
                    if on_message is not None:
                        on_message(msg)
                    yield msg
    except InvalidRequestError as e:
        code = "invalid_argument"
        # Serve keeps a code set on the context when the method raises (else: INTERNAL).
        if grpc_context is not None:
            grpc_context.set_code(grpc.StatusCode.INVALID_ARGUMENT)
            grpc_context.set_details(str(e))
        raise
    except (asyncio.CancelledError, GeneratorExit):
        code = "cancelled"
        raise
    except Exception:
        code = "internal"
        raise
    finally:
        rpc_metrics.latency.observe(time.perf_counter() - started, tags={"method": method})
        if code is not None:
            rpc_metrics.errors.inc(tags={"method": method, "code": code})


def run_main(app: WorkerApp, load: Callable[[str], ServableConfig], default_config: Path,
             argv: Sequence[str] | None = None, description: str = "") -> None:
    """`python -m services.workers.<name> [--config ...] [--grpc-port 9000]`: deploy, then wait for Ctrl-C."""
    ap = argparse.ArgumentParser(prog=f"python -m services.workers.{app.name}", description=description)
    ap.add_argument("--config", default=str(default_config), help="worker config YAML")
    ap.add_argument("--grpc-port", type=int, default=9000)
    ap.add_argument("--http-port", type=int, default=8000, help="Serve always starts its HTTP proxy too")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of a locally started Ray")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # SIGTERM (docker stop, the stack's supervisor) and a SIGINT that a launching shell set to
    # "ignore" must both reach the cleanup below, or the local Ray's agents outlive us.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.default_int_handler)
    try:
        start_worker(app, load(args.config), args.grpc_port, args.http_port, num_cpus=args.num_cpus)
        print(f"{app.name} worker up: gRPC localhost:{args.grpc_port}, metadata ('application', '{app.name}'); "
              "Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()

