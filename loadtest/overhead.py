"""The gateway's own cost, measured on loopback against an echo worker (no model):

  latency     p50/p99 of the same 4-word request sent directly to the echo worker
              (TextWorkerService.GenerateText, streamed to the end) and through the gateway
              (TextGenerationService.Generate: Redis queue -> dispatcher -> worker -> job event
              stream -> back). Sequential calls, direct and gateway interleaved (rotating which
              goes first) so machine noise hits both; added = gateway percentile - direct percentile.
              Also through a bare grpc.aio relay (forwards Generate to the worker; no auth, Redis or
              job): what one more Python gRPC hop adds here, the floor under any gateway's number.
  throughput  N Generate calls kept C at a time in flight over a few channels, through ONE gateway
              process; completed jobs per wall second, and CPU milliseconds per job of each process.

Redis, the echo worker and the gateway each run in their own process (loadtest.stack), so this
process (the load generator) does not share the gateway's event loop. When a target is missed the
run ends with diagnostics: Redis commands per job by kind (the gateway's redis-py calls counted and
timed in its process), dispatcher polling sleeps, the cost of one redis-py round trip, and with
--profile a cProfile of the gateway's event-loop thread under load.

    python -m loadtest.overhead [--requests 5000] [--concurrency 64] [--samples 300] [--dispatchers 1] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from loadtest.stack import EchoStack, restore_signals, stop_on_signals
from tessera.v1 import text_pb2, text_pb2_grpc
from tessera.worker.v1 import worker_pb2, worker_pb2_grpc

PROMPT = "one two three four"  # 4 words: 4 chunks, so the per-chunk path is exercised too
TARGET_ADDED_P50_MS, TARGET_ADDED_P99_MS, TARGET_JOBS_PER_S = 2.0, 10.0, 1000.0
CALL_TIMEOUT_S = 30.0


def pct(xs: list[float], q: float) -> float:
    """Percentile q (0-100), linear interpolation between order statistics (numpy's default)."""
    s = sorted(xs)
    if not s:
        raise ValueError("no samples")
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class LatencyResult:
    direct_ms: list[float]
    gateway_ms: list[float]
    relay_ms: list[float] = field(default_factory=list)  # through a bare grpc.aio relay (the floor)

    def summary(self) -> dict[str, float]:
        d50, d99 = pct(self.direct_ms, 50), pct(self.direct_ms, 99)
        g50, g99 = pct(self.gateway_ms, 50), pct(self.gateway_ms, 99)
        out = {"direct_p50_ms": d50, "direct_p99_ms": d99, "gateway_p50_ms": g50, "gateway_p99_ms": g99,
               "added_p50_ms": g50 - d50, "added_p99_ms": g99 - d99}
        if self.relay_ms:
            r50, r99 = pct(self.relay_ms, 50), pct(self.relay_ms, 99)
            out |= {"relay_p50_ms": r50, "relay_p99_ms": r99, "relay_added_p50_ms": r50 - d50,
                    "relay_added_p99_ms": r99 - d99}
        return out


@dataclass
class ThroughputResult:
    requests: int
    concurrency: int
    channels: int
    max_in_flight: int
    completed: int
    failed: int
    wall_s: float
    latencies_ms: list[float]
    cpu_s: dict[str, float]  # CPU seconds used during the run, per process
    first_error: str = ""
    dispatchers: int = 0  # dispatcher processes beside the gateway (0: the gateway dispatches itself)

    @property
    def jobs_per_s(self) -> float:
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    def cpu_ms_per_job(self) -> dict[str, float]:
        return {k: 1000 * v / self.completed for k, v in self.cpu_s.items()} if self.completed else {}


def _worker_request() -> worker_pb2.GenerateTextRequest:
    # What the dispatcher sends for PROMPT (services/dispatcher/worker_client.py), minus the job id.
    return worker_pb2.GenerateTextRequest(job_id="direct", prompt=PROMPT)


def _gateway_request() -> text_pb2.GenerateRequest:
    return text_pb2.GenerateRequest(request=text_pb2.TextRequest(prompt=PROMPT))


async def _direct_call(stub: worker_pb2_grpc.TextWorkerServiceStub) -> float:
    t = time.perf_counter()
    words = [m.text async for m in stub.GenerateText(_worker_request(), timeout=CALL_TIMEOUT_S,
                                                     metadata=(("application", "text"),)) if m.token_count]
    ms = (time.perf_counter() - t) * 1000
    if "".join(words) != PROMPT:
        raise AssertionError(f"echo worker returned {''.join(words)!r}")
    return ms


async def _gateway_call(stub: text_pb2_grpc.TextGenerationServiceStub, metadata: Any) -> float:
    t = time.perf_counter()
    resp = await stub.Generate(_gateway_request(), metadata=metadata, timeout=CALL_TIMEOUT_S)
    ms = (time.perf_counter() - t) * 1000
    if resp.result.text != PROMPT:
        raise AssertionError(f"gateway returned {resp.result.text!r}")
    return ms


async def measure_latency(stack: EchoStack, samples: int = 300, warmup: int = 30) -> LatencyResult:
    """Sequential (concurrency 1) calls, direct, through the gateway and (when the stack has one)
    through the bare relay, interleaved in a rotating order."""
    relay_address = f"127.0.0.1:{stack.relay.port}" if stack.relay is not None else stack.gateway_address
    async with grpc.aio.insecure_channel(stack.worker_address) as wch, \
            grpc.aio.insecure_channel(stack.gateway_address) as gch, \
            grpc.aio.insecure_channel(relay_address) as rch:
        worker = worker_pb2_grpc.TextWorkerServiceStub(wch)
        gateway = text_pb2_grpc.TextGenerationServiceStub(gch)
        relay = text_pb2_grpc.TextGenerationServiceStub(rch)
        md = stack.metadata
        kinds: dict[str, Callable[[], Awaitable[float]]] = {
            "direct": lambda: _direct_call(worker), "gateway": lambda: _gateway_call(gateway, md)}
        if stack.relay is not None:
            kinds["relay"] = lambda: _gateway_call(relay, ())
        got: dict[str, list[float]] = {k: [] for k in kinds}
        names = list(kinds)
        for i in range(warmup + samples):
            # Rotate the order so no kind always runs right after another's cleanup.
            for k in names[i % len(names):] + names[:i % len(names)]:
                ms = await kinds[k]()
                if i >= warmup:
                    got[k].append(ms)
    return LatencyResult(got["direct"], got["gateway"], got.get("relay", []))


async def _generate_many(stack: EchoStack, requests: int, concurrency: int, channels: int,
                         deadline_s: float) -> tuple[int, int, list[float], str, float]:
    """Run `requests` Generate calls, `concurrency` at a time; (ok, failed, latencies, first error, wall s)."""
    # Separate TCP connections per channel (a local subchannel pool), like a few independent clients.
    opts = [("grpc.use_local_subchannel_pool", 1)]
    chans = [grpc.aio.insecure_channel(stack.gateway_address, options=opts) for _ in range(channels)]
    stubs = [text_pb2_grpc.TextGenerationServiceStub(c) for c in chans]
    md = stack.metadata
    state = {"next": 0, "ok": 0, "failed": 0}
    latencies: list[float] = []
    errors: list[str] = []
    stop_at = time.perf_counter() + deadline_s

    async def client(i: int) -> None:
        stub = stubs[i % len(stubs)]
        while state["next"] < requests and time.perf_counter() < stop_at:
            state["next"] += 1
            try:
                latencies.append(await _gateway_call(stub, md))
                state["ok"] += 1
            except (grpc.aio.AioRpcError, AssertionError) as e:
                state["failed"] += 1
                errors.append(f"{e.code().name}: {e.details()}" if isinstance(e, grpc.aio.AioRpcError) else str(e))

    try:
        await asyncio.gather(*(c.channel_ready() for c in chans))
        t = time.perf_counter()
        await asyncio.gather(*(client(i) for i in range(concurrency)))
        wall = time.perf_counter() - t
    finally:
        await asyncio.gather(*(c.close() for c in chans))
    return state["ok"], state["failed"], latencies, (errors[0] if errors else ""), wall


async def measure_throughput(stack: EchoStack, requests: int = 2000, concurrency: int = 64, channels: int = 2,
                             warmup: int | None = None, deadline_s: float = 120.0) -> ThroughputResult:
    """Completed jobs per wall second through one gateway process, after a warm-up burst (which
    grows the gateway's Redis connection pool to its working size)."""
    await _generate_many(stack, concurrency * 2 if warmup is None else warmup, concurrency, channels, deadline_s)
    before = stack.cpu_s()
    ok, failed, lat, err, wall = await _generate_many(stack, requests, concurrency, channels, deadline_s)
    after = stack.cpu_s()
    cpu = {k: after[k] - before[k] for k in before if before[k] is not None and after[k] is not None}  # type: ignore[operator]
    return ThroughputResult(requests, concurrency, channels, stack.max_in_flight, ok, failed, wall, lat, cpu, err,
                            len(stack.dispatchers))


# ---- diagnostics ---------------------------------------------------------------------------------


@dataclass
class Diagnostics:
    sequential_jobs: int
    sequential: dict[str, Any]  # probe stats over sequential gateway calls
    loaded_jobs: int
    loaded_wall_s: float
    loaded: dict[str, Any]  # probe stats over a concurrent run
    redis_rtt_us: dict[str, float] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)  # top, areas, wall_s, busy_s
    profiled_jobs: int = 0
    profiled_jobs_per_s: float = 0.0


async def redis_round_trip_us(url: str, n: int = 1000) -> dict[str, float]:
    """Mean wall microseconds of one sequential Redis round trip from this process: through redis-py
    asyncio with the gateway's client options (JobStore.from_url), and over a plain blocking socket
    (the floor that loopback + redis-server set; the difference is client-side Python)."""
    import socket
    from urllib.parse import urlparse

    import redis.asyncio as aioredis

    out = {}
    r = aioredis.from_url(url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10)
    try:
        for _ in range(100):
            await r.xlen("loadtest:none")
        t = time.perf_counter()
        for _ in range(n):
            await r.xlen("loadtest:none")
        out["redis-py asyncio XLEN"] = (time.perf_counter() - t) / n * 1e6
    finally:
        await r.aclose()
    u = urlparse(url)
    with socket.create_connection((u.hostname or "127.0.0.1", u.port or 6379), timeout=5) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        cmd = b"*2\r\n$4\r\nXLEN\r\n$13\r\nloadtest:none\r\n"
        for i in range(100 + n):
            if i == 100:
                t = time.perf_counter()
            sock.sendall(cmd)
            if sock.recv(64) != b":0\r\n":
                raise AssertionError("unexpected XLEN reply")
        out["raw socket XLEN (floor)"] = (time.perf_counter() - t) / n * 1e6
    return out


async def diagnose(stack: EchoStack, samples: int = 100, requests: int = 500, concurrency: int = 64,
                   channels: int = 2, profile: bool = False) -> Diagnostics:
    gw = stack.gateway
    async with grpc.aio.insecure_channel(stack.gateway_address) as ch:
        stub = text_pb2_grpc.TextGenerationServiceStub(ch)
        await _gateway_call(stub, stack.metadata)
        gw.call("probe_on")
        for _ in range(samples):
            await _gateway_call(stub, stack.metadata)
        await asyncio.sleep(0.05)  # let the dispatcher's post-result work (ack/delete) land
        sequential = gw.call("probe_stats")
    gw.call("probe_on")
    ok, _, _, _, wall = await _generate_many(stack, requests, concurrency, channels, 120.0)
    await asyncio.sleep(0.05)
    loaded = gw.call("probe_stats")
    gw.call("probe_off")
    d = Diagnostics(samples, sequential, ok, wall, loaded, await redis_round_trip_us(stack.redis.url))
    if profile:
        gw.call("profile_start")
        ok, _, _, _, wall = await _generate_many(stack, requests, concurrency, channels, 120.0)
        d.profile = gw.call("profile_stop", "25")
        d.profiled_jobs, d.profiled_jobs_per_s = ok, ok / wall
    return d


# ---- report --------------------------------------------------------------------------------------


def _mark(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def verdicts(lat: dict[str, float], jobs_per_s: float) -> dict[str, bool]:
    return {"added_p50": lat["added_p50_ms"] <= TARGET_ADDED_P50_MS,
            "added_p99": lat["added_p99_ms"] <= TARGET_ADDED_P99_MS, "jobs_per_s": jobs_per_s >= TARGET_JOBS_PER_S}


def format_report(lat: LatencyResult, tp: ThroughputResult, warmup: int) -> str:
    s = lat.summary()
    v = verdicts(s, tp.jobs_per_s)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    cpu = tp.cpu_ms_per_job()
    u50, u99 = (pct(tp.latencies_ms, 50), pct(tp.latencies_ms, 99)) if tp.latencies_ms else (0.0, 0.0)
    lines = [
        f"Tessera gateway overhead: loopback, echo worker (delay 0), prompt {PROMPT!r}; "
        f"{os.cpu_count()} CPUs, load average {load:.2f} at the end",
        "",
        f"latency: {len(lat.direct_ms)} sequential calls of each kind, interleaved, after {warmup} warm-up pairs",
        f"  {'':28}{'p50 ms':>9}{'p99 ms':>9}",
        f"  {'direct to echo worker':28}{s['direct_p50_ms']:9.2f}{s['direct_p99_ms']:9.2f}",
        f"  {'through the gateway':28}{s['gateway_p50_ms']:9.2f}{s['gateway_p99_ms']:9.2f}",
        f"  {'added by the gateway':28}{s['added_p50_ms']:9.2f}{s['added_p99_ms']:9.2f}",
        *([f"  {'through a bare relay':28}{s['relay_p50_ms']:9.2f}{s['relay_p99_ms']:9.2f}",
           f"  {'added by the bare relay':28}{s['relay_added_p50_ms']:9.2f}{s['relay_added_p99_ms']:9.2f}"
           "   (one grpc.aio hop, no Redis: the floor of any Python gateway here)"] if lat.relay_ms else []),
        f"  target added p50 <= {TARGET_ADDED_P50_MS:g} ms: {_mark(v['added_p50'])}   "
        f"added p99 <= {TARGET_ADDED_P99_MS:g} ms: {_mark(v['added_p99'])}",
        "",
        f"throughput: {tp.requests} Generate jobs, concurrency {tp.concurrency} over {tp.channels} channels, "
        f"one gateway process, {_dispatching(tp.dispatchers)}, max_in_flight {tp.max_in_flight}",
        f"  completed {tp.completed}/{tp.requests} (failed {tp.failed}) in {tp.wall_s:.2f} s = "
        f"{tp.jobs_per_s:.0f} jobs/s   target >= {TARGET_JOBS_PER_S:g} jobs/s: {_mark(v['jobs_per_s'])}",
        f"  latency under load: p50 {u50:.1f} ms, p99 {u99:.1f} ms",
        "  CPU ms per job: " + ", ".join(f"{k} {x:.2f}" for k, x in cpu.items())
        + f" (sum {sum(cpu.values()):.2f}; {os.cpu_count()} CPUs shared with everything else on the machine)",
    ]
    if cpu.get("gateway"):
        # What the wall number cannot show on a small machine: how many jobs one gateway process
        # carries per second of its own CPU, i.e. on a core of its own with the rest elsewhere.
        lines.append(f"  one gateway process per CPU core: {1000 / cpu['gateway']:.0f} jobs/s "
                     f"(1000 / its {cpu['gateway']:.2f} CPU ms per job); the whole stack on this machine: "
                     f"{1000 * (os.cpu_count() or 1) / sum(cpu.values()):.0f} jobs/s at most")
    if tp.first_error:
        lines.append(f"  first error: {tp.first_error}")
    return "\n".join(lines)


def _dispatching(n: int) -> str:
    return "dispatching in the gateway process" if n == 0 else f"{n} dispatcher process{'es' if n > 1 else ''}"


def _per_job_rows(stats: dict[str, Any], jobs: int) -> list[str]:
    rows = []
    calls = stats["calls"]
    for name, (n, secs, entries) in sorted(calls.items(), key=lambda kv: -kv[1][0]):
        extra = f"   {entries / n:.2f} events/reply" if name.startswith(("XREAD ", "XREADGROUP")) else ""
        kind = "waits for data" if "(blocking)" in name else f"{1e6 * secs / n:7.0f} us mean"
        rows.append(f"    {name:44}{n / jobs:7.2f}/job  {kind}{extra}")
    total = sum(n for n, _, _ in calls.values())
    nonblocking = sum(n for name, (n, _, _) in calls.items() if "(blocking)" not in name)
    rows.append(f"    {'total':44}{total / jobs:7.2f}/job  ({nonblocking / jobs:.2f} non-blocking)")
    for delay, (n, secs) in sorted(stats["sleeps"].items(), key=lambda kv: -kv[1][0]):
        rows.append(f"    asyncio.sleep({delay}) {n} times, {secs:.2f} s requested, {n / jobs:.2f}/job")
    return rows


def format_diagnostics(d: Diagnostics) -> str:
    seq_busy = sum(s for name, (_, s, _) in d.sequential["calls"].items() if "(blocking)" not in name)
    lines = ["", "diagnostics (gateway process; redis-py calls counted and timed there, probe on):",
             f"  sequential, {d.sequential_jobs} Generate calls "
             f"(non-blocking Redis wall time {1000 * seq_busy / d.sequential_jobs:.2f} ms per call):",
             *_per_job_rows(d.sequential, d.sequential_jobs),
             f"  concurrent, {d.loaded_jobs} jobs at {d.loaded_jobs / d.loaded_wall_s:.0f} jobs/s with the probe on "
             "(mean times include event-loop queueing):",
             *_per_job_rows(d.loaded, d.loaded_jobs),
             "  one sequential redis-py asyncio command (XLEN) from the load generator process:",
             *(f"    {k:44}{v:7.0f} us" for k, v in d.redis_rtt_us.items())]
    if d.profile:
        p = d.profile
        own = sum(p["areas"].values())
        lines += [f"  cProfile of the gateway's event-loop thread, {d.profiled_jobs} jobs under load "
                  f"({d.profiled_jobs_per_s:.0f} jobs/s while profiled; cProfile slows Python code down):",
                  f"    loop busy {p['busy_s']:.2f} s of {p['wall_s']:.2f} s wall; "
                  f"own time {1000 * own / d.profiled_jobs:.2f} ms per job, by area:",
                  "    " + ", ".join(f"{a} {100 * t / own:.0f}%" for a, t in
                                     sorted(p["areas"].items(), key=lambda kv: -kv[1]) if own),
                  f"    {'tottime s':>10}{'cumtime s':>10}{'calls':>9}  function (coroutine calls count resumptions)"]
        lines += [f"    {tt:10.3f}{ct:10.3f}{nc:9d}  {fn}" for fn, nc, tt, ct in p["top"]]
    return "\n".join(lines)


def to_json(lat: LatencyResult, tp: ThroughputResult, d: Diagnostics | None) -> dict[str, Any]:
    s = lat.summary()
    out: dict[str, Any] = {k: round(v, 3) for k, v in s.items()}
    out.update(jobs_per_s=round(tp.jobs_per_s, 1), requests=tp.requests, concurrency=tp.concurrency,
               # Beyond the required keys: what is needed to read the numbers.
               samples=len(lat.direct_ms), completed=tp.completed, failed=tp.failed, max_in_flight=tp.max_in_flight,
               channels=tp.channels, dispatchers=tp.dispatchers,
               cpu_ms_per_job={k: round(v, 3) for k, v in tp.cpu_ms_per_job().items()},
               targets={k: _mark(ok) for k, ok in verdicts(s, tp.jobs_per_s).items()})
    if d is not None:
        out["redis_calls_per_job"] = {name: round(c[0] / d.loaded_jobs, 3) for name, c in d.loaded["calls"].items()}
    return out


async def run(a: argparse.Namespace, stack: EchoStack) -> tuple[LatencyResult, ThroughputResult, Diagnostics | None]:
    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    say(f"latency: {a.warmup} warm-up + {a.samples} sequential pairs ...")
    lat = await measure_latency(stack, a.samples, a.warmup)
    say(f"throughput: {a.requests} jobs at concurrency {a.concurrency} ...")
    tp = await measure_throughput(stack, a.requests, a.concurrency, a.channels, deadline_s=a.max_seconds)
    d = None
    missed = not all(verdicts(lat.summary(), tp.jobs_per_s).values())
    if a.profile or (missed and a.diagnose):
        say("diagnostics: counting the gateway's Redis commands" + (" and profiling" if a.profile else "") + " ...")
        d = await diagnose(stack, min(a.samples, 100), min(a.requests, 1000), a.concurrency, a.channels, a.profile)
    return lat, tp, d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Measure the Tessera gateway's added latency and its throughput")
    ap.add_argument("--requests", type=int, default=5000, help="throughput jobs (default 5000: a few seconds)")
    ap.add_argument("--concurrency", type=int, default=64, help="throughput calls in flight (default 64)")
    ap.add_argument("--channels", type=int, default=2, help="client channels (TCP connections) for throughput")
    ap.add_argument("--samples", type=int, default=300, help="sequential latency samples of each kind")
    ap.add_argument("--warmup", type=int, default=30, help="latency warm-up pairs")
    ap.add_argument("--max-in-flight", type=int, default=64, help="the gateway dispatcher's window")
    ap.add_argument("--max-seconds", type=float, default=120.0, help="stop the throughput run after this long")
    ap.add_argument("--diagnose", action=argparse.BooleanOptionalAction, default=True,
                    help="count the gateway's Redis commands when a target is missed (default on)")
    ap.add_argument("--profile", action="store_true", help="also cProfile the gateway process under load")
    ap.add_argument("--gateway-loop", choices=["asyncio", "uvloop"], default="asyncio",
                    help="event loop of the gateway process (uvloop: an experiment; the gateway ships on asyncio)")
    # Dispatchers scale apart from the gateway (python -m services.dispatcher), as in a cluster, so by
    # default the gateway process only serves the API; 0 also makes it dispatch (make run's layout).
    ap.add_argument("--dispatchers", type=int, default=1,
                    help="run N dispatcher processes beside the gateway (default 1; 0: inside the gateway process)")
    ap.add_argument("--relay", action=argparse.BooleanOptionalAction, default=True,
                    help="also time a bare grpc.aio relay to the worker, the floor of the added latency")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = ap.parse_args(argv)
    if min(a.requests, a.concurrency, a.channels, a.samples) <= 0 or a.warmup < 0:
        ap.error("--requests, --concurrency, --channels and --samples must be positive")
    # Processes are started and stopped outside the event loop, so they are cleaned up however
    # the measurement ends (Ctrl-C cancels the main task, then this finally runs).
    previous = stop_on_signals()
    try:
        stack = EchoStack.start(max_in_flight=a.max_in_flight, gateway_loop=a.gateway_loop, dispatchers=a.dispatchers,
                                relay=a.relay)
        try:
            lat, tp, d = asyncio.run(run(a, stack))
        finally:
            stack.close()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        restore_signals(previous)
    if a.json:
        print(json.dumps(to_json(lat, tp, d)))
    else:
        print(format_report(lat, tp, a.warmup))
        if d is not None:
            print(format_diagnostics(d))
    return 0 if tp.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
