"""The KV pool's two layouts side by side (docs/batching.md#the-kv-pool): one engine per layout,
the same held-out problems through each at one concurrency, rounds interleaved so machine noise
falls on both. Prints each round and the slots/paged throughput ratio per method.

    python -m lab.bench.kv_layout --problems 48 --concurrency 16 --rounds 3
"""

from __future__ import annotations

import argparse

import torch

from lab.bench.concurrency import methods, run_level
from lab.bench.text import fresh_problems
from models.engine.config import EngineConfig
from models.engine.text_engine import TextEngine

LAYOUTS = ("paged", "slots")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--problems", type=int, default=48)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--methods", default="ar,d2f")
    args = ap.parse_args()
    torch.set_num_threads(1)
    probs = fresh_problems(args.problems, args.seed)
    for name in args.methods.split(","):
        ckpt, method, opts, policy = methods()[name]
        engines = {lay: TextEngine(ckpt, method, opts, config=EngineConfig(
            max_num_seqs=args.concurrency, kv_layout=lay, adaptive=policy)) for lay in LAYOUTS}  # type: ignore[arg-type]
        for eng in engines.values():
            run_level(eng, probs[:8], args.concurrency, 128, "warm")
        tokens, walls = dict.fromkeys(LAYOUTS, 0), dict.fromkeys(LAYOUTS, 0.0)
        for r in range(args.rounds):
            for lay in LAYOUTS if r % 2 == 0 else LAYOUTS[::-1]:
                out, wall, _ = run_level(engines[lay], probs, args.concurrency, 128, f"{lay}{r}")
                n = sum(o.tokens for o in out)
                tokens[lay] += n
                walls[lay] += wall
                print(f"{name:4} {lay:5} round {r}: {n / wall:7.0f} tok/s  score "
                      f"{sum(o.correct for o in out) / len(out):.3f}", flush=True)
        ratio = (tokens["slots"] / walls["slots"]) / (tokens["paged"] / walls["paged"])
        print(f"{name:4} slots/paged throughput: {ratio:.2f}x", flush=True)


if __name__ == "__main__":
    main()
