"""What one engine step costs at each batch size, with nothing else running: the ceiling on
batching's speedup (docs/batching.md#the-ar-ceiling).

For each batch size b, b held-out problems are submitted at once and the engine's own steps are
timed: the median of the steps that ran exactly b pure decode windows (one token each for AR; no
prompt in the step), split into the batched forward with its inputs (`run`) and the rest of the step
(scheduling, sampling, commits, detokenizing). Batch sizes are interleaved over rounds. A step of b
decodes makes b tokens, so b * step(1) / step(b) is the most aggregate TPS at concurrency b can gain
over batch 1 in steady state; a served workload also pays its prompts, its ragged tail and its
clients, so it stays below that.

    python -m lab.bench.step_cost --batches 1,4,16,64 --rounds 3 [--device cuda] [--json]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

import torch

from lab.bench.concurrency import methods
from lab.bench.steps import StepSample, record_steps, summarize
from lab.bench.text import fresh_problems
from models.engine import EngineConfig, TextEngine
from models.sampling import SamplingParams


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,4,16,64")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--method", default="ar", choices=["ar"], help="a method whose decode windows are one token")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--seed", type=int, default=9090)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (a GPU step is weight- or launch-bound)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    batches = [int(x) for x in args.batches.split(",")]
    ckpt, method, opts, policy = methods()[args.method]
    engine = TextEngine(ckpt, method, opts, device=args.device,
                        config=EngineConfig(max_num_seqs=max(batches), adaptive=policy))
    params = SamplingParams(max_tokens=args.max_tokens)
    problems = fresh_problems(sum(batches) * args.rounds + 8, args.seed)
    engine.generate([p.question for p in problems[:8]], params)  # warm-up
    log = record_steps(engine)
    rounds: list[dict[int, list[StepSample]]] = []
    at = 8
    for r in range(args.rounds):
        rounds.append({})
        for b in batches if r % 2 == 0 else batches[::-1]:
            n0 = len(log)
            engine.generate([p.question for p in problems[at : at + b]], params)
            at += b
            rounds[-1][b] = log[n0:]
    rows = summarize(rounds)
    engine.close()
    if args.json:
        print(json.dumps({"method": args.method, "rows": [asdict(r) for r in rows]}))
        return
    print(f"{args.method}: one engine step of b decode windows ({args.rounds} rounds, median)")
    print(f"{'batch':>5} {'steps':>6} {'step ms':>8} {'forward':>8} {'rest':>6} {'ms/token':>9} {'ceiling':>8}  rounds")
    for r in rows:
        print(f"{r.batch:5d} {r.steps:6d} {r.step_ms:8.2f} {r.run_ms:8.2f} {r.rest_ms:6.2f} "
              f"{r.per_token_ms:9.3f} {r.ceiling:7.2f}x  {r.ceiling_min:.2f}-{r.ceiling_max:.2f}x")


if __name__ == "__main__":
    main()
