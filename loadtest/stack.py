"""A loopback Tessera stack for load tests: a private redis-server, an echo worker, and ONE gateway
process, each in its own OS process. Dispatchers run inside the gateway process (the default) or,
with `dispatchers=N`, as N processes of their own (how a cluster scales them).

Separate processes because what we measure is the gateway process: a load generator or a worker
sharing the gateway's event loop (and GIL) would bill their own CPU to the gateway. The parent
talks to each child over its stdin/stdout: the child prints `READY <port>`, then answers one JSON
line per command line; it shuts down when its stdin closes, so the children go away with the
parent however the parent ends (Ctrl-C, exception, kill -9).

This file is the parent side; what each child runs is loadtest/children.py. The gateway child can
switch on diagnostics at run time, so the measured runs are never slowed down by instrumentation:
  probe_on / probe_off   count and time every Redis command (EVALSHA named after its Lua script,
                         blocking XREADs apart) and every asyncio.sleep of >= 1 ms (loadtest/probe.py)
  probe_stats            the counters
  profile_start / profile_stop [N]   cProfile of the event-loop thread; top N functions by tottime

    python -m loadtest.stack [--port 50051] [--max-in-flight 64] [--delay-s 0]

serves the stack until Ctrl-C and prints the gateway address and API key (for loadtest/locustfile.py).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.children import DEFAULT_KEY

ROOT = Path(__file__).resolve().parents[1]
READY_TIMEOUT_S = 60.0  # imports of grpc + protobuf + redis take seconds on a busy 2-core machine

def proc_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of a process (all its threads), from /proc; None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) may contain spaces; fields after its closing paren are fixed.
    rest = stat.rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / os.sysconf("SC_CLK_TCK")


class Child:
    """One child process speaking the READY / command-line / JSON-reply protocol."""

    def __init__(self, role: str, args: list[str], ready_timeout_s: float = READY_TIMEOUT_S) -> None:
        self.role = role
        env = dict(os.environ)
        # The repository is not necessarily pip-installed: make `services`, `models`, `loadtest` importable.
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest.children", role, *args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env, bufsize=0)
        self._buf = b""
        try:
            line = self._readline(ready_timeout_s)
            if not line.startswith("READY "):
                raise RuntimeError(f"{role} child said {line!r} instead of READY")
            self.port = int(line.split()[1])
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _readline(self, timeout_s: float) -> str:
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{self.role} child did not answer within {timeout_s:.0f}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    raise RuntimeError(f"{self.role} child exited (rc={self.proc.poll()}); see its stderr above")
                self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line.decode()

    def call(self, *command: str, timeout_s: float = 60.0) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write((" ".join(command) + "\n").encode())
        reply = json.loads(self._readline(timeout_s))
        if "error" in reply:
            raise RuntimeError(f"{self.role} child: {reply['error']}")
        return reply

    def cpu_s(self) -> float | None:
        return proc_cpu_s(self.proc.pid)

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(OSError):
                self.proc.stdin.close()  # EOF = orderly shutdown
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class EchoStack:
    """Redis + echo worker + one gateway on 127.0.0.1. Use as a context manager."""

    redis: Any  # services.queue.redis_server.RedisServer (imported lazily: children do not need it)
    worker: Child
    gateway: Child
    max_in_flight: int
    api_key: str
    delay_s: float
    dispatchers: list[Child] = field(default_factory=list)  # empty: dispatching runs in the gateway
    relay: Child | None = None  # a bare forwarding hop (the latency floor of any grpc.aio gateway)
    closed: bool = field(default=False)

    @classmethod
    def start(cls, max_in_flight: int = 64, delay_s: float = 0.0, port: int = 0,
              api_key: str = DEFAULT_KEY, gateway_loop: str = "asyncio", dispatchers: int = 0,
              relay: bool = False, redis_fsync: str = "everysec") -> EchoStack:
        """`redis_fsync`: the append-only file's fsync policy (always, everysec, no), or "off" for no
        persistence at all (what the stack ran before jobs were made durable)."""
        from services.queue.redis_server import RedisServer

        redis = (RedisServer(persist=False) if redis_fsync == "off" else RedisServer(fsync=redis_fsync)).start()
        children: list[Child] = []
        prefix = f"lt{os.urandom(4).hex()}:"
        try:
            worker = Child("worker", ["--delay-s", str(delay_s)])
            children.append(worker)
            common = ["--redis-url", redis.url, "--worker", f"127.0.0.1:{worker.port}", "--prefix", prefix,
                      "--max-in-flight", str(max_in_flight), "--loop", gateway_loop]
            gateway = Child("gateway", [*common, "--port", str(port), "--api-key", api_key,
                                        "--in-process-dispatcher", "0" if dispatchers else "1"])
            children.append(gateway)
            extra = []
            for _ in range(dispatchers):
                extra.append(Child("dispatcher", common))
                children.append(extra[-1])
            relay_child = Child("relay", ["--worker", f"127.0.0.1:{worker.port}"]) if relay else None
            if relay_child is not None:
                children.append(relay_child)
        except BaseException:
            for c in reversed(children):
                c.stop()
            redis.__exit__(None, None, None)
            raise
        return cls(redis, worker, gateway, max_in_flight, api_key, delay_s, extra, relay_child)

    @property
    def gateway_address(self) -> str:
        return f"127.0.0.1:{self.gateway.port}"

    @property
    def worker_address(self) -> str:
        return f"127.0.0.1:{self.worker.port}"

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.api_key}"),)

    def cpu_s(self) -> dict[str, float | None]:
        """CPU seconds so far of each process; `client` is this (the load-generating) process."""
        out = {"gateway": self.gateway.cpu_s(), "worker": self.worker.cpu_s(),
               "redis": proc_cpu_s(self.redis.proc.pid) if self.redis.proc else None,
               "client": time.process_time()}
        for i, d in enumerate(self.dispatchers):
            out[f"dispatcher{i}"] = d.cpu_s()
        return out

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        # Gateway and dispatchers first: they hold Redis connections and channels to the worker.
        for child in (self.gateway, *self.dispatchers, *([self.relay] if self.relay else []), self.worker):
            with contextlib.suppress(Exception):
                child.stop()
        self.redis.__exit__(None, None, None)  # stops redis-server and removes its directory

    def __enter__(self) -> EchoStack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def stop_on_signals() -> dict[int, Any]:
    """Turn SIGTERM (and SIGINT, which a shell ignores for background jobs) into KeyboardInterrupt,
    so `finally` blocks stop the stack's processes instead of orphaning redis-server. Returns the
    previous handlers, for restore_signals."""
    return {sig: signal.signal(sig, _interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}


def restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)


def main() -> None:
    ap = argparse.ArgumentParser(description="Serve a loopback Redis + echo worker + gateway stack until Ctrl-C")
    ap.add_argument("--port", type=int, default=50051, help="gateway port (0 = any free port)")
    ap.add_argument("--max-in-flight", type=int, default=64, help="dispatcher window (DispatcherConfig)")
    ap.add_argument("--delay-s", type=float, default=0.0, help="echo worker delay per word")
    ap.add_argument("--api-key", default=os.environ.get("TESSERA_API_KEY", DEFAULT_KEY))
    ap.add_argument("--gateway-loop", choices=["asyncio", "uvloop"], default="asyncio",
                    help="event loop of the gateway process (uvloop: an experiment, not what production runs)")
    ap.add_argument("--dispatchers", type=int, default=0,
                    help="dispatcher processes of their own (0: dispatch inside the gateway process)")
    a = ap.parse_args()
    stop_on_signals()
    with EchoStack.start(a.max_in_flight, a.delay_s, a.port, a.api_key, a.gateway_loop, a.dispatchers) as st:
        print(f"gateway {st.gateway_address} (echo worker {st.worker_address}, redis {st.redis.url}, "
              f"dispatcher max_in_flight {a.max_in_flight})\n\n"
              f"  TESSERA_API_KEY={a.api_key} locust -f loadtest/locustfile.py --headless -u 8 -r 4 -t 30s "
              f"--host {st.gateway_address}\n\nCtrl-C stops the stack.", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while st.gateway.proc.poll() is None and st.worker.proc.poll() is None:
                time.sleep(0.5)


if __name__ == "__main__":
    main()
