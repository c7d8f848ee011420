"""The real text worker through the whole stack, at several concurrencies: what a client of a deployment
gets from continuous batching (issue 22), gateway, queue and dispatcher included.

    python -m loadtest.text [--concurrency 1,4,16] [--problems 64] [--seed 1] [--json]

Parts (loadtest/chaos_stack.py, no faults): a private redis-server, Ray Serve with the Serve config's
text app (the embedded D2F model on CPU, one replica; its max_ongoing_requests is the engine's batch
width), one gateway process and one dispatcher process (window 64, so the queue does not throttle the
worker). For each concurrency C, C closed-loop SDK clients (AsyncClient.stream_text) share the same
held-out arithmetic problems (lab/worlds/arith.py, `--seed` N > 0: none of them tuned on), each greedy.

Per level: aggregate TPS (completion tokens of every call / wall time), per-request TPS (mean of each
call's tokens / its end-to-end time), time to first chunk and end-to-end p50/p99 as the client saw
them, exact-answer score, errors by code, and the ratio to concurrency 1 (aggregate TPS). The levels
run interleaved over `--rounds` so machine noise lands on all of them. The in-process numbers of the
engine alone are `python -m lab.bench text --concurrency ...` (docs/batching.md).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import secrets
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.bench.text import fresh_problems
from lab.worlds import arith
from loadtest.chaos_ledger import pct


@dataclass
class Level:
    concurrency: int
    calls: int = 0
    tokens: int = 0
    wall_s: float = 0.0
    per_request_tps: list[float] = field(default_factory=list)
    ttfc_s: list[float] = field(default_factory=list)
    e2e_s: list[float] = field(default_factory=list)
    correct: float = 0.0
    errors: collections.Counter[str] = field(default_factory=collections.Counter)

    def row(self, base_tps: float | None) -> dict[str, Any]:
        tps = self.tokens / self.wall_s if self.wall_s else 0.0
        ok = self.calls - sum(self.errors.values())
        return {"concurrency": self.concurrency, "calls": self.calls, "aggregate_tps": round(tps, 1),
                "per_request_tps": round(sum(self.per_request_tps) / max(1, len(self.per_request_tps)), 1),
                "ttfc_p50_s": pct(self.ttfc_s, 50), "ttfc_p99_s": pct(self.ttfc_s, 99),
                "e2e_p50_s": pct(self.e2e_s, 50), "e2e_p99_s": pct(self.e2e_s, 99),
                "score": round(self.correct / ok, 3) if ok else None, "failed": sum(self.errors.values()),
                "errors": dict(self.errors), "vs_concurrency_1": round(tps / base_tps, 2) if base_tps else None}


async def run_level(address: str, api_key: str, problems: list[arith.Problem], level: Level,
                    max_tokens: int) -> None:
    import tessera

    todo = iter(problems)
    async with tessera.AsyncClient(address, api_key=api_key, timeout=300) as client:
        async def worker() -> None:
            for p in todo:
                t0 = time.perf_counter()
                first, text = None, ""
                try:
                    stream = client.stream_text(p.question, max_tokens=max_tokens)
                    async for chunk in stream:
                        if first is None and chunk.text:
                            first = time.perf_counter() - t0
                        text += chunk.text
                    result = stream.result
                except tessera.TesseraError as e:
                    level.errors[e.code.name] += 1
                    level.calls += 1
                    continue
                e2e = time.perf_counter() - t0
                n = result.usage.completion_tokens if result is not None else 0
                level.calls += 1
                level.tokens += n
                level.e2e_s.append(e2e)
                level.ttfc_s.append(first if first is not None else e2e)
                level.per_request_tps.append(n / e2e if e2e else 0.0)
                level.correct += arith.score(p, text)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(level.concurrency)))
        level.wall_s += time.perf_counter() - t0


def run(levels: list[int], problems: int, seed: int, rounds: int, max_tokens: int) -> dict[str, Any]:
    from loadtest.chaos_stack import ChaosStack, StackOptions, Workers

    os.environ.setdefault("TESSERA_WORKER_TOKEN", secrets.token_urlsafe(24))  # before Ray: replicas inherit it
    work = fresh_problems(problems, seed)
    workers = Workers.plan(images=False)
    with tempfile.TemporaryDirectory(prefix="tessera-textload-") as tmp:
        stack = ChaosStack(workers, Path(tmp), StackOptions(dispatchers=1, max_in_flight=64))
        try:
            stack.start()
            workers.start(dashboard=False)
            asyncio.run(stack.wait_ready())
            asyncio.run(run_level(stack.address, stack.api_key, work[:4], Level(1), max_tokens))  # warm-up
            results = {c: Level(c) for c in levels}
            for r in range(rounds):
                order = levels if r % 2 == 0 else list(reversed(levels))
                for c in order:
                    print(f"round {r + 1}/{rounds}: concurrency {c} ...", file=sys.stderr, flush=True)
                    asyncio.run(run_level(stack.address, stack.api_key, work, results[c], max_tokens))
        finally:
            stack.close()
            workers.stop()
    base = results[levels[0]]
    base_tps = base.tokens / base.wall_s if levels[0] == 1 and base.wall_s else None
    return {"rows": [results[c].row(base_tps) for c in levels], "problems": problems, "seed": seed,
            "rounds": rounds, "loadavg": os.getloadavg()}


def format_table(out: dict[str, Any]) -> str:
    lines = [f"text worker through the stack: {out['problems']} held-out problems (seed {out['seed']}) per level "
             f"and round, {out['rounds']} round(s); load {out['loadavg'][0]:.1f}",
             f"{'conc':>5}{'agg TPS':>9}{'vs c=1':>8}{'req TPS':>9}{'TTFC p50/p99 s':>17}{'e2e p50/p99 s':>16}"
             f"{'score':>7}{'failed':>8}"]
    for r in out["rows"]:
        lines.append(f"{r['concurrency']:>5}{r['aggregate_tps']:>9.0f}{r['vs_concurrency_1'] or 0:>8.2f}"
                     f"{r['per_request_tps']:>9.0f}{r['ttfc_p50_s']:>9.2f}/{r['ttfc_p99_s']:<7.2f}"
                     f"{r['e2e_p50_s']:>8.2f}/{r['e2e_p99_s']:<7.2f}{r['score'] or 0:>7.3f}{r['failed']:>8}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", default="1,4,16", help="comma-separated levels (start with 1 for ratios)")
    ap.add_argument("--problems", type=int, default=64, help="calls per level and round")
    ap.add_argument("--seed", type=int, default=1, help="held-out problem set (> 0: none tuned on)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    levels = [int(x) for x in a.concurrency.split(",") if x.strip()]
    if not levels or min(levels) < 1 or a.problems < 1 or a.rounds < 1:
        ap.error("--concurrency levels, --problems and --rounds must be positive")
    out = run(levels, a.problems, a.seed, a.rounds, a.max_tokens)
    print(json.dumps(out) if a.json else format_table(out))
    return 0 if all(r["failed"] == 0 for r in out["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
