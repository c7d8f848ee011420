"""Text decoding benchmark: the columns of the D2F paper's Table 1 on held-out arith problems.

Every method decodes the same problems, interleaved problem by problem so that machine noise
lands on all of them alike; the ratios between rows are the result, not the absolute numbers.
- vanilla, fast-dllm: the bidirectional teacher (training-free methods);
- d2f: the D2F student (LoRA adapter on the teacher);
- ar: the autoregressive baseline of the same size.
TPS = generated tokens (up to EOS) / wall time; score = exact-answer accuracy.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lab.worlds import arith
from models.engine import TextEngine
from models.resolve import resolve_base
from models.sampling import SamplingParams

CKPT = Path(__file__).resolve().parents[2] / "checkpoints"
STUDENT, AR = CKPT / "arith-d2f-lora", CKPT / "arith-qwen2-ar"


def teacher_of(student: Path) -> Path:
    """The base model a D2F adapter was trained on, found as the loader finds it."""
    return resolve_base(student)


TEACHER = teacher_of(STUDENT)


def methods(ckpt: Path = CKPT) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Decoding defaults: paper defaults for D2F (tau_add 0.1, tau_act 0.95, tau_conf 0.9) and
    Fast-dLLM (threshold 0.9); LLaDA's reference setting for vanilla (one token per step)."""
    student = ckpt / "arith-d2f-lora"
    teacher = teacher_of(student)
    return {
        "vanilla": (teacher, {"block_size": 32}),
        "fast-dllm": (teacher, {"block_size": 32, "threshold": 0.9}),
        "d2f": (student, {"block_size": 32, "tau_add": 0.1, "tau_act": 0.95, "tau_conf": 0.9}),
        "ar": (ckpt / "arith-qwen2-ar", {}),
    }


@dataclass(slots=True)
class Row:
    method: str
    tps: float
    latency_s: float
    gen_len: float
    tokens_per_forward: float
    score: float


@dataclass(slots=True)
class _Acc:
    tokens: int = 0
    forwards: int = 0
    seconds: float = 0.0
    correct: float = 0.0
    n: int = 0

    def row(self, method: str) -> Row:
        return Row(method, self.tokens / self.seconds, self.seconds / self.n, self.tokens / self.n,
                   self.tokens / max(self.forwards, 1), self.correct / self.n)


TUNED_ON = 300  # the recipe was chosen by scores on seed 0's first held-out problems (docs/history.md)


def fresh_problems(n: int, seed: int) -> list[arith.Problem]:
    """`n` held-out problems of `seed`; for seed != 0 none of the set the recipe was tuned on, so the
    score is what a reader gets on problems nobody looked at (seed 0: the tuned-on set itself)."""
    if seed == 0:
        return arith.problems("heldout", n)
    tuned = {p.question for p in arith.problems("heldout", TUNED_ON)}
    out: list[arith.Problem] = []
    draw = n
    while len(out) < n:  # draw more until enough survive the exclusion
        out = [p for p in arith.problems("heldout", draw, seed=seed) if p.question not in tuned][:n]
        draw += n - len(out) + 8
    return out


def run(problems: int, methods: dict[str, tuple[Path, dict[str, Any]]], max_tokens: int = 128,
        device: str = "cpu", seed: int = 0) -> list[Row]:
    engines = {m: TextEngine(path, "ar" if m == "ar" else m.split(":")[0], opts, device=device)
               for m, (path, opts) in methods.items()}
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
    probs = fresh_problems(problems, seed)
    for e in engines.values():  # warm-up: first calls pay one-off allocation costs
        e.generate([probs[0].question], params)
    acc = {m: _Acc() for m in engines}
    for p in probs:
        for m, e in engines.items():
            t0 = time.perf_counter()
            c = e.generate([p.question], params)[0]
            a = acc[m]
            a.seconds += time.perf_counter() - t0
            a.tokens += len(c.token_ids)
            a.forwards += c.forwards
            a.correct += arith.score(p, c.text)
            a.n += 1
    return [acc[m].row(m) for m in engines]


def print_table(rows: list[Row]) -> None:
    print(f"{'method':<12} {'TPS':>8} {'latency(s)':>11} {'gen len':>8} {'tok/fwd':>8} {'score':>6}")
    for r in rows:
        print(f"{r.method:<12} {r.tps:>8.1f} {r.latency_s:>11.3f} {r.gen_len:>8.1f} "
              f"{r.tokens_per_forward:>8.2f} {r.score:>6.3f}")
    by = {r.method: r for r in rows}
    if "d2f" in by:
        for base in ("vanilla", "fast-dllm", "ar"):
            if base in by and by[base].tps > 0:  # an untrained model may emit EOS at once
                print(f"d2f / {base}: {by['d2f'].tps / by[base].tps:.2f}x TPS")


def sweep(problems: int, out: Path, ckpt: Path = CKPT, device: str = "cpu") -> list[dict[str, Any]]:
    """Throughput vs score for D2F threshold settings (and Fast-dLLM thresholds), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grid: dict[str, tuple[Path, dict[str, Any]]] = {}
    student = ckpt / "arith-d2f-lora"
    teacher = teacher_of(student)
    for conf in (0.5, 0.7, 0.8, 0.9, 0.95, 0.99):
        for add in (0.1, 0.5, 0.9):
            grid[f"d2f:conf={conf},add={add}"] = (
                student, {"block_size": 32, "tau_add": add, "tau_act": max(conf, 0.95), "tau_conf": conf})
    for thr in (0.5, 0.7, 0.9, 0.99):
        grid[f"fast-dllm:thr={thr}"] = (teacher, {"block_size": 32, "threshold": thr})
    rows = run(problems, grid, device=device)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for family, marker in (("d2f", "o"), ("fast-dllm", "s")):
        pts = [r for r in rows if r.method.startswith(family + ":")]
        ax.scatter([r.tps for r in pts], [r.score for r in pts], marker=marker, label=family)
        for r in pts:
            ax.annotate(r.method.split(":")[1], (r.tps, r.score), fontsize=6)
    ax.set_xlabel("tokens / s (batch 1, CPU)")
    ax.set_ylabel("exact-answer accuracy")
    ax.set_title("Throughput vs score on held-out arith problems")
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return [asdict(r) for r in rows]


def main(args: Any) -> None:
    torch.set_num_threads(args.threads)
    if args.sweep:
        rows = sweep(args.problems, args.plot, args.checkpoints, args.device)
        print(json.dumps({"rows": rows, "plot": str(args.plot)}) if args.json else
              "\n".join(f"{r['method']:<28} tps {r['tps']:8.1f} score {r['score']:.3f} "
                        f"tok/fwd {r['tokens_per_forward']:.2f}" for r in rows) + f"\nplot: {args.plot}")
        return
    chosen = {m: v for m, v in methods(args.checkpoints).items() if m in args.methods.split(",")}
    rows = run(args.problems, chosen, device=args.device, seed=args.seed)
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows]}))
    else:
        print_table(rows)
