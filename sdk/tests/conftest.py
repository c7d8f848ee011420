"""Fixtures: one real gRPC server per session (starting one costs ~50 ms), fresh recorded state per test."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from fake_gateway import FakeGateway, RestartableGateway, Servicers, serve


@pytest.fixture(scope="session")
def _grpc_server() -> Iterator[tuple[grpc.Server, int, Servicers]]:
    parts = Servicers.new()
    server, port = serve(parts)
    yield server, port, parts
    server.stop(grace=None)


@pytest.fixture
def server(_grpc_server: tuple[grpc.Server, int, Servicers]) -> FakeGateway:
    """The shared server with fresh recorded state and an empty job store."""
    _, port, parts = _grpc_server
    rec = parts.reset()
    return FakeGateway(f"127.0.0.1:{port}", rec, parts.jobs)


@pytest.fixture
def restartable() -> Iterator[RestartableGateway]:
    """A server of the test's own, which it may stop and bring back on the same port."""
    gateway = RestartableGateway()
    yield gateway
    gateway.close()
