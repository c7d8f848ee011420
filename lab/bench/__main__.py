"""Benchmarks: `python -m lab.bench text [--problems N] [--json] [--sweep] [--concurrency 1,4,16,64]`,
`... image [--json]`, `... cuda [--json]`."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from lab.bench import concurrency, cuda, image, text


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m lab.bench", description=__doc__)
    sub = ap.add_subparsers(dest="suite", required=True)
    t = sub.add_parser("text", help="vanilla / Fast-dLLM / D2F / AR decoding on held-out arith problems")
    t.add_argument("--problems", type=int, default=100)
    t.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    t.add_argument("--seed", type=int, default=0,
                   help="held-out draw; 0 = the set the recipe was tuned on, N > 0 = fresh problems (none of it)")
    t.add_argument("--sweep", action="store_true", help="threshold sweep; saves a throughput-vs-score plot")
    t.add_argument("--plot", type=Path, default=Path("bench-results/text_sweep.png"))
    t.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for tiny models)")
    t.add_argument("--methods", default="vanilla,fast-dllm,d2f,ar", help="comma-separated subset of the rows")
    t.add_argument("--checkpoints", type=Path, default=text.CKPT, help="folder holding the three checkpoints")
    t.add_argument("--device", default="cpu")
    t.add_argument("--concurrency", help="e.g. 1,4,16,64: the batched engine under that many concurrent clients "
                   "(methods d2f, d2f-adaptive, fast-dllm, ar unless --methods), with the roofline")
    t.add_argument("--concurrency-plot", type=Path, default=Path("bench-results/text_concurrency.png"),
                   help="aggregate TPS vs concurrency per method, with the roofline limits (--concurrency)")
    t.add_argument("--rounds", type=int, default=2, help="--concurrency: every cell once per round, interleaved")
    t.add_argument("--layout", default="packed", help="--concurrency: the batch layout, packed or padded; "
                   "'packed,padded' adds rows <method>/padded")
    t.add_argument("--reference", type=int, default=0,
                   help="--concurrency: also time each method's single-sequence decoder on this many problems")
    c = sub.add_parser("cuda", help="the GPU path: dtype parity, cache exactness, attention and large-shape timings")
    c.add_argument("--problems", type=int, default=50)
    c.add_argument("--json", action="store_true")
    im = sub.add_parser("image", help="Orthus / NextStep on held-out shapes: T2I score, edits, VQA, images/s at 1 vs 8")
    im.add_argument("--problems", type=int, default=50)
    im.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    im.add_argument("--backends", default="orthus,nextstep")
    im.add_argument("--checkpoints", type=Path, default=image.CKPT, help="folder holding the shapes-* checkpoints")
    im.add_argument("--device", default="cpu")
    im.add_argument("--breakdown", action="store_true",
                    help="instead of the table: where each backend's edits fail (cells by token index, error kinds)")
    im.add_argument("--context", action="store_true",
                    help="instead of the table: T2I teacher-forced, without the VAE's leak, and free-running")
    args = ap.parse_args()
    if args.suite == "image":
        torch.set_num_threads(1)
        image.main(args)
    elif args.suite == "text" and args.concurrency:
        torch.set_num_threads(args.threads)
        concurrency.main(args)
    elif args.suite == "text":
        text.main(args)
    elif args.suite == "cuda":
        cuda.main(args)


if __name__ == "__main__":
    main()
