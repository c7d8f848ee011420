"""Start the understanding worker on Ray Serve behind its gRPC proxy (`python -m
services.workers.understanding`, and the one-command stack)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.workers.serving import ALL_SERVICERS, run_main, start_worker
from services.workers.understanding.config import DEFAULT_CONFIG_PATH, UnderstandingWorkerConfig, load_config
from services.workers.understanding.deployment import UNDERSTANDING_APP


def start_understanding_worker(config: UnderstandingWorkerConfig | Mapping[str, Any] | str | Path | None = None,
                               grpc_port: int = 9000, http_port: int = 8000, *, num_cpus: int | None = None,
                               servicers: Sequence[str] = ALL_SERVICERS) -> None:
    """Deploy the understanding worker app (application "understanding") and return once it is up."""
    start_worker(UNDERSTANDING_APP, load_config(config), grpc_port, http_port, num_cpus=num_cpus,
                 servicers=servicers)


def main(argv: Sequence[str] | None = None) -> None:
    run_main(UNDERSTANDING_APP, load_config, DEFAULT_CONFIG_PATH, argv, __doc__ or "")
