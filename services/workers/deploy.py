"""Start Serve and deploy worker apps from a validated Serve config: what `serve run <file>` does,
as a library, for `make run`, `python -m services.workers` and the tests.

Apps go through Serve's declarative path (the controller imports each `import_path`, calls the
builder with `args` and applies `deployments:`), exactly as for `serve run`, `serve deploy` and a
RayService, so there is one way an app's options reach Serve. Deploying some apps keeps the other
apps already deployed from a config (Serve's declarative API would delete them), so workers can be
added to a running Serve one by one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

import ray
from ray import serve
from ray.serve._private.client import ServeControllerClient
from ray.serve.config import gRPCOptions
from ray.serve.context import _get_global_client
from ray.serve.schema import ServeDeploySchema, ServeInstanceDetails

from services.workers.config import REPO_ROOT
from services.workers.protocol import WORKER_AUTH_ENV, WORKER_TOKEN_ENV

log = logging.getLogger(__name__)
_PROXY_CHECK_ENV = ("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "RAY_SERVE_PROXY_HEALTH_CHECK_TIMEOUT_S")


def lenient_proxy_checks() -> dict[str, str]:
    """Serve kills a proxy that misses 3 readiness checks of 5 s; on a busy laptop or CI box a fresh
    proxy can take longer to import, and serve.start then fails after 60 s. Raise both timeouts to
    30 s unless set already. The raylet (and so the Serve controller) inherits them from this
    process, so call it before ray.init; returns them for a runtime_env too."""
    for k in _PROXY_CHECK_ENV:
        os.environ.setdefault(k, "30")
    return {k: os.environ[k] for k in _PROXY_CHECK_ENV}


def start_serve(schema: ServeDeploySchema, *, num_cpus: int | None = None) -> None:
    """Connect to (or start) Ray, and make sure Serve runs with the config's proxies. Connects to
    RAY_ADDRESS or an initialized Ray, else starts a local one."""
    if not ray.is_initialized():
        env = {}
        if not os.environ.get("RAY_ADDRESS"):
            # Local cluster: make `models`/`services` importable in replicas whatever the cwd, and hand
            # them this process's worker credential (on a cluster the pods' environment carries it).
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
            env.update({k: os.environ[k] for k in (WORKER_TOKEN_ENV, WORKER_AUTH_ENV) if k in os.environ})
            lenient_proxy_checks()
        ray.init(num_cpus=num_cpus, runtime_env={"env_vars": env} if env else None)
    grpc = gRPCOptions(**schema.grpc_options.model_dump())
    serve.start(proxy_location=schema.proxy_location, http_options=schema.http_options.model_dump(),
                grpc_options=grpc)
    _check_grpc_options(grpc)


def deploy(schema: ServeDeploySchema, *, timeout_s: float = 600.0) -> None:
    """Deploy the schema's apps onto the running Serve (start_serve first) and wait until they run."""
    client = _client()
    names = [a.name for a in schema.applications]
    details = ServeInstanceDetails(**client.get_serve_details())
    kept = [d.deployed_app_config for n, d in details.applications.items()
            if n not in names and d.deployed_app_config is not None]
    client.deploy_apps(schema.model_copy(update={"applications": kept + list(schema.applications)}))
    wait_running(names, timeout_s)
    log.info("worker apps %s running on gRPC port %d", names, schema.grpc_options.port)


def wait_running(names: Iterable[str], timeout_s: float = 600.0) -> None:
    """Block until every app is RUNNING; raise with Serve's own message if one fails to deploy."""
    names = list(names)
    deadline = time.monotonic() + timeout_s
    while True:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else "NOT_STARTED" for n in names}
        failed = {n: apps[n].message for n, s in states.items() if s in ("DEPLOY_FAILED", "UNHEALTHY")}
        if failed:
            raise RuntimeError("worker app(s) failed to deploy: " + "; ".join(f"{n}: {m}" for n, m in failed.items()))
        if all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker apps not running after {timeout_s:.0f} s: {states}")
        time.sleep(0.5)


def _client() -> ServeControllerClient:
    # Serve's private client: declarative deploys have no public Python API (`serve run <file>` uses it too).

    return _get_global_client()


def _check_grpc_options(wanted: gRPCOptions) -> None:
    # serve.start ignores new proxy options when Serve already runs, and the RPCs would then fail with
    # UNIMPLEMENTED or go nowhere; fail here with the reason instead.
    current: gRPCOptions = ray.get(_client()._controller.get_grpc_config.remote())
    missing = [s for s in wanted.grpc_servicer_functions if s not in current.grpc_servicer_functions]
    if missing or current.port != wanted.port:
        raise RuntimeError(f"Serve is already running with gRPC port {current.port} and servicers "
                           f"{current.grpc_servicer_functions}; the config needs port {wanted.port} with "
                           f"{', '.join(missing) or 'the same servicers'}. Restart Serve (serve.shutdown()).")
