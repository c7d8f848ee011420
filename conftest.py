"""Session fixtures shared by every test directory: one Ray cluster with Serve's gRPC proxy (started on
first use, serving every worker servicer) and tiny image checkpoints. Modules deploy their apps onto
the one Serve and delete them when done, instead of each starting a cluster (~10 s each on 2 cores)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ServeCluster:
    grpc_port: int
    http_port: int


@pytest.fixture(scope="session")
def serve_cluster() -> Iterator[ServeCluster]:
    ray = pytest.importorskip("ray")
    from ray import serve

    from services.common.redis_server import free_port
    from services.workers.serving import ensure_serve, lenient_proxy_checks

    lenient = lenient_proxy_checks()  # a loaded 2-core machine starts Serve's proxy slowly
    # 4 logical CPUs: text, image and understanding replicas (1 CPU each) fit on the 2-core machine.
    ray.init(num_cpus=4, include_dashboard=False, logging_level="warning",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT), **lenient}})
    try:
        cluster = ServeCluster(free_port(), free_port())
        ensure_serve(cluster.grpc_port, cluster.http_port)
        yield cluster
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="session")
def image_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """<dir>/shapes-orthus and <dir>/shapes-nextstep: tiny random models, tokenizer and VAE (~1 s)."""
    from lab.training.images.tiny import build_tiny_image_checkpoints

    return build_tiny_image_checkpoints(tmp_path_factory.mktemp("image-ckpt"))
