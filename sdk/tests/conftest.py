"""Fixtures: one real gRPC server per session (starting one costs ~50 ms), fresh recorded state per test."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from fake_gateway import FakeGateway, JobServicer, Recorder, TextServicer, start


@pytest.fixture(scope="session")
def _grpc_server() -> Iterator[tuple[grpc.Server, str, TextServicer, JobServicer]]:
    server, address, text, jobs = start()
    yield server, address, text, jobs
    server.stop(grace=None)


@pytest.fixture
def server(_grpc_server: tuple[grpc.Server, str, TextServicer, JobServicer]) -> FakeGateway:
    """The shared server with fresh recorded state and an empty job store."""
    _, address, text, jobs = _grpc_server
    rec = Recorder()
    text.rec = jobs.rec = rec
    jobs.jobs.clear()
    jobs.by_key.clear()
    return FakeGateway(address, rec, jobs)
