"""Benchmarks: `python -m models.bench text [--problems N] [--json] [--sweep]`."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.bench import text


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m models.bench", description=__doc__)
    sub = ap.add_subparsers(dest="suite", required=True)
    t = sub.add_parser("text", help="vanilla / Fast-dLLM / D2F / AR decoding on held-out arith problems")
    t.add_argument("--problems", type=int, default=100)
    t.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    t.add_argument("--sweep", action="store_true", help="threshold sweep; saves a throughput-vs-score plot")
    t.add_argument("--plot", type=Path, default=Path("bench-results/text_sweep.png"))
    t.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for tiny models)")
    args = ap.parse_args()
    if args.suite == "text":
        text.main(args)


if __name__ == "__main__":
    main()
