"""Shared fixtures: a private redis-server for the whole test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.queue.redis_server import RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server
