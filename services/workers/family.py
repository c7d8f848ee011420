"""What a model family contributes to the one worker framework: its args, its engine and the RPCs it
serves (each one engine method plus a metrics observer). Nothing else: the server class, config,
cancellation, health, shutdown and metrics plumbing are shared (server.py).

Each family module (text/family.py, image/family.py, understanding/family.py) defines one `Family`;
builders.py turns it into a Serve application builder.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from services.workers.config import AppArgs
from services.workers.metrics import StreamObserver, WorkerMetrics
from services.workers.protocol import WorkerEngine

_PB = "tessera.worker.v1.worker_pb2_grpc"
# Every app serves cancellation; Serve's gRPC proxy must be started with it (grpc_options).
CONTROL_SERVICER = f"{_PB}.add_WorkerControlServiceServicer_to_server"


def servicer(service: str) -> str:
    """The `grpc_servicer_functions` entry for a tessera.worker.v1 service."""
    return f"{_PB}.add_{service}Servicer_to_server"


@dataclass(frozen=True, slots=True)
class ReplicaLimits:
    """What the engine must know of its deployment (Serve's `deployments:` entry, read in the replica)."""

    max_ongoing_requests: int


@dataclass(frozen=True, slots=True)
class Rpc:
    """One RPC of the family's service: the engine method serving it, and what its messages record."""

    engine_method: str
    streaming: bool = True
    observe: Callable[[WorkerMetrics, str, Any], StreamObserver] | None = None  # (metrics, method, request)


@dataclass(frozen=True, slots=True)
class Family:
    name: str  # the app's name: callers pick it with metadata ("application", name)
    service: str  # its tessera.worker.v1 service, e.g. "TextWorkerService"
    deployment: str  # the Serve deployment's name (the Serve config's `deployments[].name`)
    args: type[AppArgs]
    # Builds the engine in the replica; imports the model code there, so neither the builder (run by
    # Serve's controller) nor config validation pulls in torch.
    engine: Callable[[Any, ReplicaLimits], WorkerEngine]
    rpcs: Mapping[str, Rpc]
    # Engine methods a DeploymentHandle may call through WorkerServer.stats (diagnostics, not RPCs).
    stats: tuple[str, ...] = field(default=())

    @property
    def servicer(self) -> str:
        return servicer(self.service)

    @property
    def route_prefix(self) -> str:
        # Must not be None: the gRPC proxy only finds apps that have one.
        return f"/{self.name}"
