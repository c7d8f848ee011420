"""`make run`'s start-up checks (services/stack.py): busy ports are named before anything starts, and
the development key joins the user's API keys instead of replacing them."""

from __future__ import annotations

import argparse
import socket

import pytest

from services.queue.redis_server import free_port
from services.stack import check_ports, with_key
from services.workers import serve_config


def _args(**kw: int) -> argparse.Namespace:
    ports = {"port": free_port(), "metrics_port": free_port(), "redis_port": 0, **kw}
    return argparse.Namespace(host="127.0.0.1", **ports)


def test_busy_ports_are_named_before_anything_starts() -> None:
    apps = serve_config.configure(grpc_port=free_port(), http_port=free_port())
    check_ports(_args(), apps)  # all free: no complaint
    with socket.socket() as taken, socket.socket() as taken2:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        taken2.bind(("0.0.0.0", 0))
        taken2.listen()
        gw, worker = taken.getsockname()[1], taken2.getsockname()[1]
        busy = serve_config.configure(grpc_port=worker, http_port=free_port())
        with pytest.raises(SystemExit) as ei:
            check_ports(_args(port=gw, redis_port=free_port()), busy)
        msg = str(ei.value)
        assert f"gateway (--port) port {gw}" in msg and f"worker gRPC proxy (--worker-port) port {worker}" in msg
        assert "metrics" not in msg and "redis" not in msg


def test_the_dev_key_joins_the_configured_keys() -> None:
    assert with_key("", "dev:abc") == "dev:abc"
    assert with_key("team:111:5, ops:222", "dev:abc") == "team:111:5,ops:222,dev:abc"
    assert with_key("dev:abc,team:111", "dev:abc") == "dev:abc,team:111"  # a second run adds nothing


def test_redis_never_gets_a_port_the_stack_binds_later(monkeypatch: pytest.MonkeyPatch) -> None:
    # The OS's ephemeral range holds 50051: make run once started Redis there, then the gateway could
    # not bind. free_port keeps each refused port bound until it has one outside `avoid`.
    offered, closed = iter([50051, 9464, 41234]), []

    class FakeSocket:
        def bind(self, addr: tuple[str, int]) -> None:
            self.port = next(offered)

        def getsockname(self) -> tuple[str, int]:
            return ("127.0.0.1", self.port)

        def close(self) -> None:
            closed.append(self.port)

    import services.queue.redis_server as rs

    monkeypatch.setattr(rs.socket, "socket", FakeSocket)
    assert rs.free_port(avoid={50051, 9464, 9000}) == 41234
    assert sorted(closed) == [9464, 41234, 50051]  # every probe released
