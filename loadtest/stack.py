"""A loopback Tessera stack for load tests: a private redis-server, an echo worker, and ONE gateway
process, each in its own OS process. Dispatchers run inside the gateway process (the default) or,
with `dispatchers=N`, as N processes of their own (how a cluster scales them).

Separate processes because what we measure is the gateway process: a load generator or a worker
sharing the gateway's event loop (and GIL) would bill their own CPU to the gateway. The parent
talks to each child over its stdin/stdout: the child prints `READY <port>`, then answers one JSON
line per command line; it shuts down when its stdin closes, so the children go away with the
parent however the parent ends (Ctrl-C, exception, kill -9).

The gateway child can switch on diagnostics at run time (commands below), so the measured runs are
never slowed down by instrumentation:
  probe_on / probe_off   count and time every Redis command (EVALSHA named after its Lua script,
                         blocking XREADs apart) and every asyncio.sleep of >= 1 ms
  probe_stats            the counters
  profile_start / profile_stop [N]   cProfile of the event-loop thread; top N functions by tottime

    python -m loadtest.stack [--port 50051] [--max-in-flight 64] [--delay-s 0]

serves the stack until Ctrl-C and prints the gateway address and API key (for loadtest/locustfile.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import io
import json
import os
import pstats
import select
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_KEY = "tessera-loadtest-key"
READY_TIMEOUT_S = 60.0  # imports of grpc + protobuf + redis take seconds on a busy 2-core machine

# ---- parent side ---------------------------------------------------------------------------------


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
        self.proc = subprocess.Popen([sys.executable, "-m", "loadtest.stack", "--child", role, *args],
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

    redis: Any  # services.common.redis_server.RedisServer (imported lazily: children do not need it)
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
              relay: bool = False) -> EchoStack:
        from services.common.redis_server import RedisServer

        redis = RedisServer().start()
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


# ---- child side ----------------------------------------------------------------------------------


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def _stdin_lines() -> asyncio.StreamReader:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    return reader


async def _serve_commands(handle: Callable[[list[str]], Awaitable[dict[str, Any]]]) -> None:
    """Answer command lines until stdin closes (the parent went away or asked us to stop)."""
    reader = await _stdin_lines()
    while line := await reader.readline():
        words = line.decode().split()
        if not words:
            continue
        try:
            reply = await handle(words)
        except Exception as e:  # report, keep serving: a bad command must not kill the stack
            reply = {"error": f"{type(e).__name__}: {e}"}
        _say(json.dumps(reply))


async def _no_commands(words: list[str]) -> dict[str, Any]:
    return {"error": f"unknown command {words[0]!r}"}


async def _serve_until_stdin_closes(server: Any, port: int, *cleanup: Callable[[], Awaitable[None]]) -> None:
    """For children that take no commands: report ready, serve until the parent closes stdin, stop."""
    _say(f"READY {port}")
    try:
        await _serve_commands(_no_commands)
    finally:
        await server.stop(0)
        for close in cleanup:
            await close()


async def _worker_child(a: argparse.Namespace) -> None:
    from services.workers.echo_worker import start_echo_worker

    server, port, _ = await start_echo_worker(0, a.delay_s)
    await _serve_until_stdin_closes(server, port)


async def _relay_child(a: argparse.Namespace) -> None:
    """The cheapest possible gateway, as a floor for the real one: a grpc.aio server whose Generate
    forwards straight to the worker and returns what it streamed. No auth, validation, Redis, job
    record or events; what it adds to a direct call is what one more Python gRPC hop costs here."""
    import grpc

    from services.dispatcher.worker_client import WorkerClient
    from tessera.v1 import text_pb2, text_pb2_grpc

    worker = WorkerClient(a.worker, "text")

    class Relay(text_pb2_grpc.TextGenerationServiceServicer):
        async def Generate(self, req: text_pb2.GenerateRequest, ctx: Any) -> text_pb2.GenerateResponse:
            parts, total = [], 0
            model = ""
            async for msg in worker.generate("relay", req.request, 0, ctx.time_remaining()):
                parts.append(msg.text)
                total += msg.token_count
                model = msg.model or model
            return text_pb2.GenerateResponse(result=text_pb2.TextResult(
                text="".join(parts), usage=text_pb2.TextUsage(completion_tokens=total), model=model))

    server = grpc.aio.server()
    text_pb2_grpc.add_TextGenerationServiceServicer_to_server(Relay(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await _serve_until_stdin_closes(server, port, worker.close)


class Probe:
    """Counts and times the gateway process's Redis commands and sleeps (diagnostics only).

    Patches redis.asyncio's Redis.execute_command / Pipeline.execute and asyncio.sleep while on.
    Times are wall times seen by the awaiting coroutine, so under load they include event-loop
    queueing, not only the Redis round trip."""

    def __init__(self, script_names: dict[str, str]) -> None:
        self.script_names = script_names
        self.calls: dict[str, list[float]] = {}  # name -> [count, seconds, entries returned]
        self.sleeps: dict[str, list[float]] = {}  # requested delay -> [count, seconds]
        self._saved: list[tuple[Any, str, Any]] = []

    def _name(self, args: tuple[Any, ...]) -> str:
        words = [a.decode(errors="replace") if isinstance(a, bytes) else str(a) for a in args[:2]]
        cmd = words[0].upper()
        if cmd == "EVALSHA":
            return f"EVALSHA {self.script_names.get(words[1], words[1][:8])}"
        if cmd in ("XREAD", "XREADGROUP") and any(a in ("BLOCK", b"BLOCK") for a in args):
            return f"{cmd} (blocking)"
        return cmd

    def _add(self, name: str, seconds: float, entries: int = 0) -> None:
        c = self.calls.setdefault(name, [0, 0.0, 0])
        c[0] += 1
        c[1] += seconds
        c[2] += entries

    def on(self) -> None:
        if self._saved:
            return
        import redis.asyncio.client as rc

        probe = self
        orig_exec, orig_pipe, orig_sleep = rc.Redis.execute_command, rc.Pipeline.execute, asyncio.sleep

        async def execute_command(self: Any, *args: Any, **options: Any) -> Any:
            t = time.perf_counter()
            result = await orig_exec(self, *args, **options)
            # XREAD replies: [[stream, [entries...]], ...] -> count the events delivered.
            entries = sum(len(s[1]) for s in result) if args[0] in ("XREAD", "XREADGROUP") and result else 0
            probe._add(probe._name(args), time.perf_counter() - t, entries)
            return result

        async def execute(self: Any, raise_on_error: bool = True) -> Any:
            name = "PIPELINE[" + " ".join(str(c[0][0]).upper() for c in self.command_stack) + "]"
            t = time.perf_counter()
            try:
                return await orig_pipe(self, raise_on_error)
            finally:
                probe._add(name, time.perf_counter() - t)

        async def sleep(delay: float, result: Any = None) -> Any:
            if delay >= 0.001:
                s = probe.sleeps.setdefault(f"{delay:g}", [0, 0.0])
                s[0] += 1
                s[1] += delay
            return await orig_sleep(delay, result)

        from services.common.resp import FastRedis

        orig_fast = FastRedis.execute

        async def fast_execute(self: Any, *args: Any) -> Any:  # the job store's scripts (pipelined client)
            t = time.perf_counter()
            try:
                return await orig_fast(self, *args)
            finally:
                probe._add(probe._name(args), time.perf_counter() - t)

        self._saved = [(rc.Redis, "execute_command", orig_exec), (rc.Pipeline, "execute", orig_pipe),
                       (asyncio, "sleep", orig_sleep), (FastRedis, "execute", orig_fast)]
        FastRedis.execute = fast_execute  # type: ignore[method-assign]
        rc.Redis.execute_command = execute_command  # type: ignore[method-assign]
        rc.Pipeline.execute = execute  # type: ignore[method-assign]
        asyncio.sleep = sleep  # type: ignore[assignment]

    def off(self) -> None:
        for owner, name, value in self._saved:
            setattr(owner, name, value)
        self._saved = []

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "sleeps": self.sleeps}


_AREAS = (("redis-py", "redis/"), ("pipelined redis", "services/common/resp.py"), ("grpc", "grpc/"),
          ("protobuf", "google/protobuf"), ("tessera services", "services/"), ("asyncio", "asyncio/"))


def _profile_report(prof: cProfile.Profile, wall_s: float, n: int) -> dict[str, Any]:
    """Top n functions by own time, own time summed by area (built-ins such as socket.send count as
    "C built-ins"), and how busy the event-loop thread was (callback time / wall time)."""
    st = pstats.Stats(prof, stream=io.StringIO())
    rows, areas, busy = [], dict.fromkeys([a for a, _ in _AREAS] + ["C built-ins", "other"], 0.0), 0.0
    for (filename, line, func), (_cc, ncalls, tottime, cumtime, _callers) in st.stats.items():  # type: ignore[attr-defined]
        short = filename.replace(str(ROOT) + "/", "").split("site-packages/")[-1]
        rows.append([f"{short}:{line}({func})", ncalls, tottime, cumtime])
        area = "C built-ins" if filename == "~" else next((a for a, m in _AREAS if m in filename), "other")
        areas[area] += tottime
        if filename.endswith("asyncio/events.py") and func == "_run":
            busy = cumtime  # every callback and task step of the loop runs inside Handle._run
    rows.sort(key=lambda r: r[2], reverse=True)
    return {"top": rows[:n], "areas": areas, "wall_s": wall_s, "busy_s": busy}


def loadtest_auth(api_key: str) -> Any:
    """One API key with a rate limit far above any load we generate (the default is 20 req/s)."""
    from services.gateway.auth import ApiKey, Authenticator, hash_key
    from services.gateway.config import AuthConfig

    digest = hash_key(api_key)
    return Authenticator(AuthConfig(enabled=True), {digest: ApiKey("loadtest", digest, 1e9, 1_000_000_000)})


async def _gateway_child(a: argparse.Namespace) -> None:
    import logging

    from services.gateway.config import DispatcherConfig, GatewayConfig
    from services.gateway.server import Gateway

    logging.basicConfig(level=logging.WARNING, format="gateway child %(levelname)s %(name)s: %(message)s")
    cfg = GatewayConfig(port=a.port, metrics_port=0, redis_url=a.redis_url, key_prefix=a.prefix, grace_s=0.5,
                        dispatcher=DispatcherConfig(enabled=a.in_process_dispatcher == 1, worker_address=a.worker,
                                                    max_in_flight=a.max_in_flight))
    gw = Gateway(cfg)
    port = await gw.start(loadtest_auth(a.api_key))
    store = gw.store
    assert store is not None
    # Private attributes, read only: they name the Lua scripts in the probe's EVALSHA counts.
    probe = Probe({store._submit.sha: "SUBMIT", store._transition.sha: "TRANSITION",
                   store._start.sha: "START", store._chunk.sha: "CHUNK"})
    prof: cProfile.Profile | None = None
    prof_t0 = 0.0
    _say(f"READY {port}")

    async def handle(words: list[str]) -> dict[str, Any]:
        nonlocal probe, prof, prof_t0
        cmd = words[0]
        if cmd == "probe_on":
            probe = Probe(probe.script_names)  # fresh counters
            probe.on()
            return {"ok": True}
        if cmd == "probe_off":
            probe.off()
            return {"ok": True}
        if cmd == "probe_stats":
            return probe.stats()
        if cmd == "profile_start":
            prof = cProfile.Profile()
            prof_t0 = time.perf_counter()
            prof.enable()
            return {"ok": True}
        if cmd == "profile_stop":
            if prof is None:
                return {"error": "profile_start first"}
            prof.disable()
            report = _profile_report(prof, time.perf_counter() - prof_t0, int(words[1]) if len(words) > 1 else 25)
            prof = None
            return report
        return {"error": f"unknown command {cmd!r}"}

    try:
        await _serve_commands(handle)
    finally:
        probe.off()
        await _stop_gateway(gw)


async def _stop_gateway(gw: Any, timeout_s: float = 3.0) -> None:
    """gw.stop(), bounded. Gateway.stop() cancels its background tasks once and gathers them; on
    Python 3.11 asyncio.wait_for (which redis-py uses for every send when socket_timeout is set)
    can swallow a cancellation that lands as the send completes, and the task then runs on, so the
    gather never returns. Cancel the survivors again rather than hang the stack's shutdown."""
    stop = asyncio.ensure_future(gw.stop())
    for _ in range(3):
        done, _ = await asyncio.wait({stop}, timeout=timeout_s)
        if done:
            return
        alive = [t for t in gw.tasks if not t.done()]
        print(f"gateway child: Gateway.stop() still waiting after {timeout_s:.0f}s on {len(alive)} task(s) "
              "that ignored cancellation; cancelling them again", file=sys.stderr, flush=True)
        for t in alive:
            t.cancel()


async def _dispatcher_child(a: argparse.Namespace) -> None:
    from services.common.jobstore import JobStore
    from services.common.metrics import Metrics
    from services.dispatcher.dispatcher import Dispatcher
    from services.dispatcher.worker_client import WorkerClient
    from services.gateway.config import DispatcherConfig

    store = JobStore.from_url(a.redis_url, prefix=a.prefix)
    worker = WorkerClient(a.worker, "text")
    task = asyncio.create_task(Dispatcher(store, worker, DispatcherConfig(worker_address=a.worker,
                                                                          max_in_flight=a.max_in_flight),
                                          Metrics()).run())
    _say("READY 0")
    try:
        await _serve_commands(_no_commands)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(task, 3.0)
        await worker.close()


def _child_main(a: argparse.Namespace) -> None:
    # Ctrl-C in a terminal signals the whole process group; the parent decides when we stop
    # (by closing our stdin), so it can shut the stack down in order.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if a.loop == "uvloop":  # an experiment knob: the gateway itself runs on asyncio's default loop
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    children = {"worker": _worker_child, "gateway": _gateway_child, "dispatcher": _dispatcher_child,
                "relay": _relay_child}
    asyncio.run(children[a.child](a))


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
    # Internal: run as one child of a stack.
    ap.add_argument("--dispatchers", type=int, default=0,
                    help="dispatcher processes of their own (0: dispatch inside the gateway process)")
    ap.add_argument("--child", choices=["worker", "gateway", "dispatcher", "relay"], help=argparse.SUPPRESS)
    ap.add_argument("--redis-url", help=argparse.SUPPRESS)
    ap.add_argument("--prefix", default="lt:", help=argparse.SUPPRESS)
    ap.add_argument("--in-process-dispatcher", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--loop", default="asyncio", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        _child_main(a)
        return
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
