"""Fault-injection benchmark (issue 21): a mixed SDK load through the real parts on loopback, with one
fault per phase, and an account of every job a client tried to submit.

    python -m loadtest.chaos [--phases baseline,replica,dispatcher,gateway,redis,redis-kill]
                             [--duration-s 20] [--fault-at-s 5] [--rate 3] [--no-images] [--json]

Parts (loadtest/chaos_stack.py): a private redis-server (append-only file, its own data dir), Ray Serve
with the Serve config's real text app (the embedded D2F model on CPU) and image app, ONE gateway
process with dispatching off, and two dispatcher processes (claim_idle_ms 3000, heartbeat_ms 500, so a
dead dispatcher's jobs are reclaimed within the run).

Load: open loop at --rate SDK calls/s, each call a fresh idempotency key and a prompt from a pool of
held-out arithmetic word problems (3 to 8 changes; greedy decoding, so a prompt's answer is fixed; half
of the text calls decoded one token per forward, --slow-share, so that jobs last long enough for a
fault to land mid-stream):
GenerateStream via AsyncClient.stream_text (most), unary Generate via the sync Client.generate_text,
SubmitJob + WatchJob via AsyncClient.submit_text_job / watch_job, and (unless --no-images) a few
GenerateImage via AsyncClient.stream_image. Every call keeps the SDK's own retry budget (UNAVAILABLE
retried for 30 s with the same idempotency key; streams resumed through WatchJob after the last event).

Phases, in turn, the load running through each; the fault lands --fault-at-s into the phase, or as soon
after (up to 5 s more) as --min-in-flight calls are in flight, so that it hits jobs:
  baseline    no fault: the reference text of each prompt, and the latency without faults
  replica     kill -9 the text replica's process (found with Ray's state API); Serve starts a new one
  dispatcher  kill -9 the dispatcher process holding the most jobs; the other reclaims them; the harness
              starts it again 1 s later
  gateway     kill -9 the gateway process; the harness starts it again on the same port 1 s later
  redis       SIGTERM Redis (the AOF is flushed), start it again on the same port and data dir 1 s later
  redis-kill  the same with SIGKILL (the AOF keeps what was written; --redis-fsync says when it is fsynced)
After its load, a phase waits (--settle-s) for its calls to end before the next phase starts; after the
last one, unfinished calls get --grace-s more.

Every call ends as exactly one of:
  done              the result arrived, and is whole: a stream's chunks concatenate to the result text,
                    their token counts add up, the text is the prompt's reference text (its baseline
                    answer; else what most calls of the prompt got), an image's progress only moves forward
  error CODE        the job ended with an error status the client received (counted by code)
  not acknowledged  the submission itself failed with an explicit error and no job exists for its key
  lost              acknowledged (a job id came back, or a job exists for its key) but by the end plus the
                    grace period the client has neither result nor error, or got NOT_FOUND, or its job
                    is gone from the store or still not finished
  duplicated        a result that repeats or garbles text (see done), or more than one job for one SDK
                    call (jobs listed per idempotency key)
Per phase: calls, acknowledged, done, errors, lost, duplicated, calls in flight when the fault landed (in
brackets, those of them already streaming their output), calls whose job took more than one dispatch
attempt (retried or reclaimed), p50/p99 latency of the text calls that got a result, the recovery time
(from the fault to the end of the first text call that started after it and got its result) and the
restart time (until the killed part was back, as the harness saw it). PASS = 0 lost and 0 duplicated in
every phase; the exit status is 1 otherwise (2 on a harness error, 130 on Ctrl-C, 124 past --timeout-s).

--sabotage no-aof (Redis without persistence) or drop-jobs (the harness deletes the records of jobs in
flight at each fault time) breaks the system on purpose: the run must then FAIL with lost jobs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from loadtest.chaos_driver import ALL_PHASES, SABOTAGE, Chaos, Options, log
from loadtest.chaos_ledger import PhaseResult, table

# ---- the command ----------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def report_json(opts: Options, phases: Sequence[PhaseResult], extra: dict[str, Any]) -> dict[str, Any]:
    return {"options": asdict(opts), **extra,
            "phases": [{**asdict(p), "passed": p.passed} for p in phases],
            "passed": all(p.passed for p in phases)}


def run(opts: Options, stack_opts: Any, run_dir: Path,
        calls_out: Path | None = None) -> tuple[list[PhaseResult], dict[str, Any]]:
    """Start everything, run the phases, stop everything (also on Ctrl-C / SIGTERM)."""
    from loadtest.chaos_stack import ChaosStack, Workers

    os.environ.setdefault("TESSERA_WORKER_TOKEN", secrets.token_urlsafe(24))  # before Ray: replicas inherit it
    workers = Workers.plan(images=opts.images)
    stack = ChaosStack(workers, run_dir, stack_opts)
    extra: dict[str, Any] = {"machine_before": machine()}
    try:
        log(f"starting redis-server, the gateway and {stack_opts.dispatchers} dispatchers (logs in {run_dir}/logs)")
        stack.start()
        log(f"starting Ray Serve with the {' and '.join(workers.apps)} app(s) (a minute on a busy 2-core machine)...")
        t = time.monotonic()
        workers.start()
        log(f"Serve is up after {time.monotonic() - t:.0f}s; workers at {workers.address}")
        extra["redis"] = {"fsync": stack.redis.fsync, "aof": stack.redis.persist}
        chaos = Chaos(stack, opts)
        phases = asyncio.run(_interruptible(chaos.run()))
        if calls_out is not None:
            with calls_out.open("w") as f:
                for c in chaos.calls:
                    f.write(json.dumps(asdict(c)) + "\n")
    finally:
        log("stopping everything...")
        stack.close()
        workers.stop()
    extra["machine_after"] = machine()
    return phases, extra


async def _interruptible(coro: Any) -> Any:
    """Run `coro`; SIGINT / SIGTERM cancel it (its cleanup runs), then raise KeyboardInterrupt."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        raise KeyboardInterrupt("interrupted") from None
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _watchdog(timeout_s: float, on_expiry: Callable[[], None]) -> threading.Timer:
    t = threading.Timer(timeout_s, on_expiry)
    t.daemon = True
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    from loadtest.chaos_stack import StackOptions
    from loadtest.stack import restore_signals, stop_on_signals
    from services.queue.redis_server import FSYNC_POLICIES

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--phases", default=",".join(ALL_PHASES), help="comma-separated, run in this order")
    ap.add_argument("--duration-s", type=float, default=20.0, help="load per phase")
    ap.add_argument("--fault-at-s", type=float, default=5.0, help="when the fault lands in its phase")
    ap.add_argument("--min-in-flight", type=int, default=3,
                    help="the fault waits (up to 5 s past --fault-at-s) until this many calls are in flight")
    ap.add_argument("--rate", type=float, default=3.0, help="SDK calls per second (open loop)")
    ap.add_argument("--settle-s", type=float, default=60.0, help="wait for a phase's calls to end, at most")
    ap.add_argument("--grace-s", type=float, default=60.0, help="after the last phase, before a call counts as lost")
    ap.add_argument("--no-images", action="store_true", help="text only (no image app, no image calls)")
    ap.add_argument("--slow-share", type=float, default=0.5,
                    help="share of text calls decoded one token per forward (tau_conf 1.0), so faults land mid-job")
    ap.add_argument("--dispatchers", type=int, default=2)
    ap.add_argument("--claim-idle-ms", type=int, default=3000)
    ap.add_argument("--heartbeat-ms", type=int, default=500)
    ap.add_argument("--redis-fsync", choices=FSYNC_POLICIES, default="everysec")
    ap.add_argument("--sabotage", choices=SABOTAGE, default=None,
                    help="break the system on purpose, to see the benchmark catch it (the run must FAIL)")
    ap.add_argument("--seed", type=int, default=21)
    ap.add_argument("--timeout-s", type=float, default=1200.0, help="hard limit on the whole run")
    ap.add_argument("--keep", action="store_true", help="keep the run directory (configs, logs, Redis AOF)")
    ap.add_argument("--json", action="store_true", help="one JSON object on stdout (the table goes to stderr)")
    ap.add_argument("--calls-out", type=Path, help="write every call (what its client saw, its outcome) here, "
                                                   "one JSON object a line")
    a = ap.parse_args(argv)
    # Ray's driver prints its cluster's errors (a killed replica's, say) on stdout: keep stdout for the
    # report alone, everything else goes to stderr.
    report_out = os.fdopen(os.dup(sys.stdout.fileno()), "w")
    sys.stdout.flush()
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    try:
        opts = Options(phases=[p.strip() for p in a.phases.split(",") if p.strip()], duration_s=a.duration_s,
                       fault_at_s=a.fault_at_s, min_in_flight=a.min_in_flight, rate=a.rate, settle_s=a.settle_s,
                       grace_s=a.grace_s, seed=a.seed, images=not a.no_images, slow_share=a.slow_share,
                       sabotage=a.sabotage or "")
    except ValueError as e:
        ap.error(str(e))
    stack_opts = StackOptions(dispatchers=a.dispatchers, claim_idle_ms=a.claim_idle_ms, heartbeat_ms=a.heartbeat_ms,
                              redis_fsync=a.redis_fsync, redis_persistence=opts.sabotage != "no-aof")
    run_dir = Path(tempfile.mkdtemp(prefix="tessera-chaos-"))
    previous = stop_on_signals()  # SIGTERM too: clean up, never orphan redis-server or Ray
    # The hard limit: a clean stop first (as SIGTERM), then, if that hangs, out without ceremony.
    soft = _watchdog(a.timeout_s, lambda: (log(f"--timeout-s {a.timeout_s:.0f} reached: stopping"),
                                           os.kill(os.getpid(), signal.SIGTERM)))
    hard = _watchdog(a.timeout_s + 120, lambda: os._exit(124))
    t0 = time.monotonic()
    try:
        phases, extra = run(opts, stack_opts, run_dir, a.calls_out)
    except (KeyboardInterrupt, SystemExit):  # SystemExit: a SIGTERM while ray.init held the signal
        log("interrupted; everything it started is stopped")
        return 124 if time.monotonic() - t0 >= a.timeout_s else 130
    except Exception:  # the harness failed (a part did not start, say): no verdict, and not a FAIL
        traceback.print_exc()
        log(f"the benchmark itself failed; logs of the run: {run_dir / 'logs'} (kept)")
        a.keep = True
        return 2
    finally:
        soft.cancel()
        hard.cancel()
        restore_signals(previous)
        if not a.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
    extra["wall_s"] = round(time.monotonic() - t0, 1)
    out = report_json(opts, phases, extra)
    text = table(phases)
    verdict = "PASS" if out["passed"] else "FAIL"
    summary = (f"{verdict}: target 0 lost, 0 duplicated in every phase (Redis AOF "
               f"{'on, appendfsync ' + extra['redis']['fsync'] if extra['redis']['aof'] else 'OFF'}; load average "
               f"{extra['machine_before']['loadavg'][0]} -> {extra['machine_after']['loadavg'][0]} on "
               f"{extra['machine_before']['cpus']} CPUs; {extra['wall_s']:.0f}s)")
    problems = [f"  {p.name}: {line}" for p in phases for line in p.problems]
    if a.json:
        print(text, summary, *problems, sep="\n", file=sys.stderr)
        print(json.dumps(out), file=report_out)
    else:
        print(text, summary, *problems, sep="\n", file=report_out)
    report_out.flush()
    return 0 if out["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
