"""Structural tests of the load-test tools: they measure what they claim and clean up after
themselves. No speed thresholds: timings depend on the machine, so only facts that hold on any
machine are asserted (every job completed, numbers positive, going through the gateway costs at
least the direct worker call it contains)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from loadtest.overhead import diagnose, main, measure_latency, measure_throughput, pct
from loadtest.stack import EchoStack


@pytest.fixture(scope="module")
def stack() -> Iterator[EchoStack]:
    with EchoStack.start(max_in_flight=64) as st:
        yield st


def test_separate_dispatcher_processes_serve_the_gateway_queue() -> None:
    """With dispatchers=2 the gateway process only queues and waits (its own dispatcher is off, so
    no job could finish without them); two dispatcher processes of their own, sharing the key
    prefix and consumer group, complete every job and are billed their own CPU."""
    with EchoStack.start(max_in_flight=8, dispatchers=2) as st:
        tp = asyncio.run(measure_throughput(st, requests=60, concurrency=8, channels=1, warmup=4))
        assert (tp.completed, tp.failed) == (60, 0)
        assert {"dispatcher0", "dispatcher1"} <= set(tp.cpu_s)


def test_pct_interpolates_between_order_statistics() -> None:
    assert pct([3.0, 1.0, 2.0], 50) == 2.0
    assert pct([1.0, 2.0], 50) == 1.5
    assert pct([1.0, 2.0, 3.0, 4.0, 5.0], 100) == 5.0
    assert pct([7.0], 99) == 7.0


def test_latency_compares_direct_and_gateway_calls(stack: EchoStack) -> None:
    lat = asyncio.run(measure_latency(stack, samples=20, warmup=2))
    assert len(lat.direct_ms) == len(lat.gateway_ms) == 20
    s = lat.summary()
    assert all(s[k] > 0 for k in ("direct_p50_ms", "direct_p99_ms", "gateway_p50_ms", "gateway_p99_ms"))
    # The gateway path contains the same worker call plus Redis and a second gRPC hop.
    assert s["gateway_p50_ms"] >= s["direct_p50_ms"]
    assert s["added_p50_ms"] == pytest.approx(s["gateway_p50_ms"] - s["direct_p50_ms"])


def test_the_bare_relay_answers_like_the_gateway_and_is_timed_alongside() -> None:
    with EchoStack.start(max_in_flight=8, relay=True) as st:
        assert st.relay is not None and st.relay.proc.poll() is None
        lat = asyncio.run(measure_latency(st, samples=10, warmup=1))
        pid = st.relay.proc.pid
    # _gateway_call checked every relay reply against the prompt; one sample per kind per round.
    assert len(lat.relay_ms) == len(lat.direct_ms) == len(lat.gateway_ms) == 10
    s = lat.summary()
    assert s["relay_added_p50_ms"] == pytest.approx(s["relay_p50_ms"] - s["direct_p50_ms"])
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped with the stack


def test_throughput_completes_every_job_and_leaves_the_queue_empty(stack: EchoStack) -> None:
    tp = asyncio.run(measure_throughput(stack, requests=100, concurrency=16, channels=2, warmup=8))
    assert (tp.completed, tp.failed, tp.first_error) == (100, 0, "")
    assert len(tp.latencies_ms) == 100 and min(tp.latencies_ms) > 0
    assert tp.wall_s > 0 and tp.jobs_per_s > 0 and tp.max_in_flight == 64
    assert tp.cpu_s["gateway"] > 0 and set(tp.cpu_ms_per_job()) == set(tp.cpu_s)
    # Finished jobs are acked and deleted from the queue stream (XLEN counts live jobs). The
    # dispatcher does that just after the result is written, so allow it a moment.
    r = redis.Redis.from_url(stack.redis.url)
    try:
        queues = list(r.scan_iter(match="*queue:text"))
        assert len(queues) == 1
        deadline = time.monotonic() + 10
        while r.xlen(queues[0]) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.xlen(queues[0]) == 0
    finally:
        r.close()


def test_diagnostics_count_the_gateways_redis_commands(stack: EchoStack) -> None:
    d = asyncio.run(diagnose(stack, samples=5, requests=20, concurrency=4, channels=1, profile=True))
    assert d.sequential["calls"]["EVALSHA SUBMIT"][0] == 5  # one submit per Generate
    assert d.loaded_jobs == 20 and d.loaded["calls"]["EVALSHA SUBMIT"][0] == 20
    assert all(v > 0 for v in d.redis_rtt_us.values())
    assert d.profile["top"] and all(len(row) == 4 for row in d.profile["top"])
    # The job path talks to Redis through the pipelined client (resp.py), not redis-py's pool.
    assert d.profiled_jobs == 20 and d.profile["areas"]["pipelined redis"] > 0 and d.profile["wall_s"] > 0
    # The probe is off again: further calls are not counted. Blocking XREADGROUPs the idle
    # dispatchers (one per queue) issued while it was on may still return and be counted; skip them.
    def settled(stats: dict) -> dict:
        return {**stats, "calls": {k: v for k, v in stats["calls"].items() if "blocking" not in k}}

    before = settled(stack.gateway.call("probe_stats"))
    asyncio.run(measure_latency(stack, samples=2, warmup=0))
    after = settled(stack.gateway.call("probe_stats"))
    assert after == before and after["calls"]


def test_cli_prints_one_json_object_and_stops_its_processes() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(["--samples", "5", "--warmup", "1", "--requests", "20", "--concurrency", "4", "--json",
                   "--no-diagnose"])
    assert rc == 0
    result = json.loads(out.getvalue())
    for key in ("direct_p50_ms", "direct_p99_ms", "gateway_p50_ms", "gateway_p99_ms", "added_p50_ms",
                "added_p99_ms", "jobs_per_s", "requests", "concurrency"):
        assert key in result
    assert (result["requests"], result["concurrency"], result["completed"]) == (20, 4, 20)
    assert result["jobs_per_s"] > 0
    # By default the gateway process only serves the API; one dispatcher process does the dispatching,
    # and its CPU is reported apart from the gateway's.
    assert result["dispatchers"] == 1 and set(result["cpu_ms_per_job"]) >= {"gateway", "dispatcher0"}


def test_locustfile_runs_against_a_gateway() -> None:
    # Locust is gevent-based and grpc.experimental.gevent patches grpc for the whole process, which
    # would break grpc.aio in this one: run the real `locust` command in a child process.
    locust = Path(sys.executable).with_name("locust")
    if not locust.exists():
        pytest.skip("locust is not installed")
    root = Path(__file__).resolve().parents[1]
    with EchoStack.start(max_in_flight=16, api_key="locust-test-key") as st:
        env = {**os.environ, "TESSERA_API_KEY": st.api_key, "TESSERA_MAX_TOKENS": "8"}
        proc = subprocess.run(
            [str(locust), "-f", str(root / "loadtest" / "locustfile.py"), "--headless", "-u", "2", "-r", "2",
             "-t", "3s", "--stop-timeout", "5", "--host", st.gateway_address, "--json", "--loglevel", "WARNING"],
            cwd=root, env=env, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    stats = {s["name"]: s for s in json.loads(proc.stdout)}
    for name in ("Generate", "GenerateStream/ttfc", "GenerateStream/total"):
        assert stats[name]["num_requests"] > 0, stats
        assert stats[name]["num_failures"] == 0, stats


def test_fsync_bench_compares_every_persistence_setting_side_by_side(capsys: pytest.CaptureFixture[str]) -> None:
    from loadtest import fsync

    assert fsync.main(["--rounds", "1", "--requests", "40", "--samples", "4", "--concurrency", "8", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"off", "no", "everysec", "always"}
    assert out["off"]["throughput_vs_off"] == 1.0
    assert all(m["jobs_per_s"] > 0 and m["added_p50_ms"] > -50 for m in out.values())


@pytest.mark.parametrize("setting", ["off", "no", "everysec", "always"])
def test_each_persistence_setting_is_what_redis_runs(setting: str) -> None:
    with EchoStack.start(max_in_flight=4, redis_fsync=setting) as st:
        r = redis.Redis.from_url(st.redis.url)
        aof = r.config_get("appendonly")["appendonly"]
        assert aof == ("no" if setting == "off" else "yes")
        if setting != "off":
            assert r.config_get("appendfsync")["appendfsync"] == setting
