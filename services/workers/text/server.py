"""Start the text worker on Ray Serve behind its gRPC proxy (used by `python -m services.workers.text`
and by the one-command stack)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ray
from ray import serve
from ray.serve.config import HTTPOptions, gRPCOptions

from services.workers.text.config import DEFAULT_CONFIG_PATH, REPO_ROOT, TextWorkerConfig, load_config
from services.workers.text.deployment import build_text_worker

TEXT_SERVICER = "tessera.worker.v1.worker_pb2_grpc.add_TextWorkerServiceServicer_to_server"
APP_NAME, ROUTE_PREFIX = "text", "/text"  # callers pass metadata ("application", "text")

log = logging.getLogger(__name__)


def start_text_worker(config: TextWorkerConfig | Mapping[str, Any] | str | Path | None = None,
                      grpc_port: int = 9000, http_port: int = 8000, *, num_cpus: int | None = None,
                      extra_servicers: Sequence[str] = ()) -> None:
    """Deploy the text worker app and return once its replicas are up.

    Connects to the Ray cluster of RAY_ADDRESS or an already initialized one, else starts a local
    one. Serve's proxies are cluster-wide and configured once: if Serve is already running, its
    gRPC options must already include the text servicer (start the stack's Serve with all of
    them, or pass the others as `extra_servicers`).
    """
    cfg = load_config(config)
    if not ray.is_initialized():
        env = {}
        if not os.environ.get("RAY_ADDRESS"):
            if not cfg.model.path.exists():  # fail now, not after Serve's constructor retries
                raise FileNotFoundError(f"model dir {cfg.model.path} does not exist (is the checkpoint trained yet?)")
            # Local cluster: make `models`/`services` importable in replicas whatever the cwd.
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
        ray.init(num_cpus=num_cpus, runtime_env={"env_vars": env} if env else None)
    serve.start(http_options=HTTPOptions(host="0.0.0.0", port=http_port),
                grpc_options=gRPCOptions(port=grpc_port, grpc_servicer_functions=[TEXT_SERVICER, *extra_servicers]))
    _check_grpc_options(grpc_port)
    # route_prefix must not be None: the gRPC proxy only finds apps that have one.
    serve.run(build_text_worker(cfg), name=APP_NAME, route_prefix=ROUTE_PREFIX)
    log.info("text worker %r serving %s on gRPC port %d", cfg.deployment.name, cfg.model.name, grpc_port)


def _check_grpc_options(grpc_port: int) -> None:
    # serve.start ignores new gRPC options when Serve already runs, and the RPCs would then fail
    # with UNIMPLEMENTED; fail here with the reason instead.
    from ray.serve.context import _get_global_client

    current: gRPCOptions = ray.get(_get_global_client()._controller.get_grpc_config.remote())
    if TEXT_SERVICER not in current.grpc_servicer_functions or current.port != grpc_port:
        raise RuntimeError(f"Serve is already running with gRPC port {current.port} and servicers "
                           f"{current.grpc_servicer_functions}; the text worker needs port {grpc_port} with "
                           f"{TEXT_SERVICER}. Restart Serve (serve.shutdown()) or start it with both.")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m services.workers.text", description=__doc__)
    ap.add_argument("--config", default=str(DEFAULT_CONFIG_PATH), help="worker config YAML")
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
        start_text_worker(args.config, args.grpc_port, args.http_port, num_cpus=args.num_cpus)
        print(f"text worker up: gRPC localhost:{args.grpc_port}, metadata ('application', '{APP_NAME}'); "
              "Ctrl-C to stop", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        if ray.is_initialized():
            serve.shutdown()
            ray.shutdown()
