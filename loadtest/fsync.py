"""What durability costs: the gateway's added latency and its throughput with the job store's Redis
under each persistence setting, measured side by side in one run.

    python -m loadtest.fsync [--rounds 3] [--requests 3000] [--samples 200] [--json]

Settings: off (no persistence: what the stack ran before jobs were made durable), no (AOF, the OS
flushes), everysec (AOF fsynced every second: the default of make run and the Helm chart), always
(AOF fsynced before every reply: nothing acknowledged is lost even on a crash of the machine). Each
round runs every setting once, in a rotated order, on a fresh stack (Redis, echo worker, gateway, one
dispatcher process); the report gives each setting's median over the rounds and its ratio to "off",
so machine noise lands on all settings alike. On this kind of machine the disk is a VM's: `always`
costs what one fsync costs here, which differs from a cloud SSD's.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys

from loadtest.overhead import measure_latency, measure_throughput
from loadtest.stack import EchoStack, restore_signals, stop_on_signals

SETTINGS = ("off", "no", "everysec", "always")


async def _measure(stack: EchoStack, samples: int, requests: int, concurrency: int) -> dict[str, float]:
    lat = (await measure_latency(stack, samples, warmup=20)).summary()
    tp = await measure_throughput(stack, requests, concurrency, channels=2)
    if tp.failed:
        raise RuntimeError(f"{tp.failed} jobs failed: {tp.first_error}")
    redis_ms = tp.cpu_ms_per_job().get("redis", 0.0)
    return {"jobs_per_s": tp.jobs_per_s, "added_p50_ms": lat["added_p50_ms"], "added_p99_ms": lat["added_p99_ms"],
            "redis_cpu_ms_per_job": redis_ms}


def run(rounds: int, samples: int, requests: int, concurrency: int) -> dict[str, dict[str, float]]:
    runs: dict[str, list[dict[str, float]]] = {s: [] for s in SETTINGS}
    for r in range(rounds):
        order = SETTINGS[r % len(SETTINGS):] + SETTINGS[:r % len(SETTINGS)]  # rotate: no setting always first
        for setting in order:
            print(f"round {r + 1}/{rounds}: redis persistence {setting} ...", file=sys.stderr, flush=True)
            with EchoStack.start(max_in_flight=64, dispatchers=1, redis_fsync=setting) as stack:
                runs[setting].append(asyncio.run(_measure(stack, samples, requests, concurrency)))
    out = {s: {k: statistics.median(m[k] for m in ms) for k in ms[0]} for s, ms in runs.items()}
    base = out["off"]
    for s in SETTINGS:
        out[s]["throughput_vs_off"] = out[s]["jobs_per_s"] / base["jobs_per_s"]
        out[s]["min_jobs_per_s"] = min(m["jobs_per_s"] for m in runs[s])
        out[s]["max_jobs_per_s"] = max(m["jobs_per_s"] for m in runs[s])
    return out


def format_report(out: dict[str, dict[str, float]], rounds: int) -> str:
    lines = [f"Redis persistence vs the gateway's cost (median of {rounds} rounds; range of jobs/s)",
             f"{'setting':<10}{'jobs/s':>9}{'range':>15}{'vs off':>8}{'added p50 ms':>14}{'added p99 ms':>14}"
             f"{'redis CPU ms/job':>18}"]
    for s in SETTINGS:
        m = out[s]
        spread = f"{m['min_jobs_per_s']:.0f}-{m['max_jobs_per_s']:.0f}"
        lines.append(f"{s:<10}{m['jobs_per_s']:>9.0f}{spread:>15}"
                     f"{m['throughput_vs_off']:>8.2f}{m['added_p50_ms']:>14.2f}{m['added_p99_ms']:>14.2f}"
                     f"{m['redis_cpu_ms_per_job']:>18.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=3000, help="throughput jobs per setting and round")
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--samples", type=int, default=200, help="sequential latency samples per setting and round")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    a = ap.parse_args(argv)
    if min(a.rounds, a.requests, a.concurrency, a.samples) <= 0:
        ap.error("--rounds, --requests, --concurrency and --samples must be positive")
    previous = stop_on_signals()
    try:
        out = run(a.rounds, a.samples, a.requests, a.concurrency)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        restore_signals(previous)
    print(json.dumps(out) if a.json else format_report(out, a.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
