"""Stream a D2F generation to the terminal: `python -m models.d2f --model <dir> "<prompt>"`.

<dir> is a model directory in HF format: a D2F PEFT adapter (its base is found through
adapter_config.json) or a full checkpoint. Defaults to the embedded tiny D2F model.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from models.engine import TextEngine
from models.sampling import SamplingParams

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "checkpoints" / "arith-d2f-lora"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prompt")
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int)
    ap.add_argument("--block-size", type=int, default=32)
    ap.add_argument("--tau-add", type=float, default=0.1)
    ap.add_argument("--tau-act", type=float, default=0.95)
    ap.add_argument("--tau-conf", type=float, default=0.9)
    ap.add_argument("--raw", action="store_true",
                    help="send the prompt as is: no chat template or prompt template, no BOS")
    args = ap.parse_args(argv)
    engine = TextEngine(args.model, "d2f", {"block_size": args.block_size, "tau_add": args.tau_add,
                                            "tau_act": args.tau_act, "tau_conf": args.tau_conf},
                        prompt_format="raw" if args.raw else "auto")
    params = SamplingParams(temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                            seed=args.seed)
    t0 = time.perf_counter()
    n = forwards = 0
    for d in engine.stream(args.prompt, params):
        sys.stdout.write(d.text)
        sys.stdout.flush()
        n += len(d.token_ids)
        forwards = d.forwards
    dt = time.perf_counter() - t0
    print(f"\n\n[{n} tokens, {forwards} forwards, {n / max(forwards, 1):.2f} tokens/forward, "
          f"{n / dt:.1f} tokens/s, {dt:.2f}s]", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
