"""Session fixtures shared by every test directory: one Ray cluster with Serve's gRPC proxy (started on
first use, serving every worker servicer) and tiny image checkpoints. Modules deploy their apps onto
the one Serve and delete them when done, instead of each starting a cluster (~10 s each on 2 cores)."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent
# The worker API's internal credential for everything this session starts (Ray replicas, dispatchers
# and gateways in-process or as subprocesses inherit it): workers refuse calls without it.
os.environ.setdefault("TESSERA_WORKER_TOKEN", "test-worker-" + os.urandom(8).hex())


@dataclass(frozen=True)
class ServeCluster:
    grpc_port: int
    http_port: int
    metrics_port: int  # Ray's metrics agent: every replica's metrics, as Prometheus scrapes them on a cluster

    def deploy(self, app: str, args: Mapping[str, Any] | None = None,
               deployment: Mapping[str, Any] | None = None) -> None:
        """Deploy one app of the shipped Serve config, with overrides, the way `make run` does."""
        from services.workers import serve_config
        from services.workers.deploy import deploy

        deploy(serve_config.configure(only=[app], args={app: args or {}}, deployments={app: deployment or {}},
                                      grpc_port=self.grpc_port, http_port=self.http_port))


@pytest.fixture(scope="session")
def serve_cluster() -> Iterator[ServeCluster]:
    ray = pytest.importorskip("ray")
    from ray import serve

    from services.queue.redis_server import free_port
    from services.workers import serve_config
    from services.workers.deploy import lenient_proxy_checks, start_serve

    lenient = lenient_proxy_checks()  # a loaded 2-core machine starts Serve's proxy slowly
    # 4 logical CPUs: text, image and understanding replicas (1 CPU each) fit on the 2-core machine.
    cluster = ServeCluster(free_port(), free_port(), free_port())
    ray.init(num_cpus=4, include_dashboard=False, logging_level="warning", _metrics_export_port=cluster.metrics_port,
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **lenient,
                                       "TESSERA_WORKER_TOKEN": os.environ["TESSERA_WORKER_TOKEN"]}})
    try:
        # The shipped file's proxies (every worker servicer) on free ports; modules deploy onto it.
        start_serve(serve_config.configure(grpc_port=cluster.grpc_port, http_port=cluster.http_port))
        yield cluster
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def image_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<dir>/shapes-orthus and <dir>/shapes-nextstep: tiny random models, tokenizer and VAE (~1 s)."""
    from lab.training.images.tiny import build_tiny_image_checkpoints

    return build_tiny_image_checkpoints(tmp_path_factory.mktemp("image-ckpt"))
