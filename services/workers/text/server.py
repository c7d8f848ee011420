"""Start the text worker on Ray Serve behind its gRPC proxy (used by `python -m services.workers.text`
and by the one-command stack)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.workers.serving import ALL_SERVICERS, TEXT_SERVICER, run_main, start_worker
from services.workers.text.config import DEFAULT_CONFIG_PATH, TextWorkerConfig, load_config
from services.workers.text.deployment import TEXT_APP

APP_NAME, ROUTE_PREFIX = TEXT_APP.name, TEXT_APP.route_prefix  # callers pass metadata ("application", "text")

__all__ = ["APP_NAME", "ROUTE_PREFIX", "TEXT_SERVICER", "main", "start_text_worker"]


def start_text_worker(config: TextWorkerConfig | Mapping[str, Any] | str | Path | None = None,
                      grpc_port: int = 9000, http_port: int = 8000, *, num_cpus: int | None = None,
                      servicers: Sequence[str] = ALL_SERVICERS) -> None:
    """Deploy the text worker app and return once its replicas are up (see serving.start_worker)."""
    start_worker(TEXT_APP, load_config(config), grpc_port, http_port, num_cpus=num_cpus, servicers=servicers)


def main(argv: Sequence[str] | None = None) -> None:
    run_main(TEXT_APP, load_config, DEFAULT_CONFIG_PATH, argv, __doc__ or "")
