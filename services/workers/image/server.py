"""Start the image worker on Ray Serve behind its gRPC proxy (`python -m services.workers.image`, and
the one-command stack)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from services.workers.image.config import DEFAULT_CONFIG_PATH, ImageWorkerConfig, load_config
from services.workers.image.deployment import IMAGE_APP
from services.workers.serving import ALL_SERVICERS, run_main, start_worker


def start_image_worker(config: ImageWorkerConfig | Mapping[str, Any] | str | Path | None = None,
                       grpc_port: int = 9000, http_port: int = 8000, *, num_cpus: int | None = None,
                       servicers: Sequence[str] = ALL_SERVICERS) -> None:
    """Deploy the image worker app (application "image") and return once its replicas are up."""
    start_worker(IMAGE_APP, load_config(config), grpc_port, http_port, num_cpus=num_cpus, servicers=servicers)


def main(argv: Sequence[str] | None = None) -> None:
    run_main(IMAGE_APP, load_config, DEFAULT_CONFIG_PATH, argv, __doc__ or "")
