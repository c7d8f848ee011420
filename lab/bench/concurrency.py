"""Text decoding under concurrent load: `python -m lab.bench text --concurrency 1,4,16,64`.

For every method and concurrency c, c closed-loop clients stream held-out arith problems through
one continuously batched TextEngine (each client sends its next problem when its last one ends),
interleaved method by method at every level so machine noise lands on all of them alike. Reported
per row: aggregate and per-request TPS, time to first chunk and end-to-end latency (p50/p99),
window tokens forwarded per generated token, score (exact-answer accuracy), failed requests, KV
memory per sequence, and the row's fraction of its roofline.

The roofline: the model's forward cost per token at large token counts, measured in the same run
(a batched forward of 16 windows of 64 tokens over a 64-token prefix, and of 64 x 64), times the
tokens a method forwards per generated token, bounds the tokens per second any batching can reach
on this machine: limit = 1 / (cost per token x tokens forwarded per generated token).
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from lab.bench.steps import StepSample, record_steps, summarize
from lab.bench.text import CKPT, fresh_problems, teacher_of
from lab.worlds import arith
from models.engine import AdaptivePolicy, EngineConfig, TextEngine, TextRequest
from models.engine.batch import build_batch
from models.engine.methods import Window
from models.sampling import SamplingParams

D2F = {"block_size": 32, "tau_add": 0.1, "tau_act": 0.95, "tau_conf": 0.9}  # the paper's defaults
# Lean D2F under load (chosen on --seed 77 and 78 sets, never on the reported ones): blocks of 16, D2F's
# training block size, a new one only once the last is 90% decoded, at most 2 in flight, from 8 requests
# running or waiting on; full pipelining again at 4 or fewer.
ADAPTIVE = AdaptivePolicy(enabled=True, busy_at=8, calm_at=4, tau_add=0.9, max_active=2, block_size=16)


def methods(ckpt: Path = CKPT) -> dict[str, tuple[Path, str, dict[str, Any], AdaptivePolicy]]:
    student = ckpt / "arith-d2f-lora"
    off = AdaptivePolicy()
    return {
        "d2f": (student, "d2f", D2F, off),
        "d2f-adaptive": (student, "d2f", D2F, ADAPTIVE),
        "fast-dllm": (teacher_of(student), "fast-dllm", {"block_size": 32, "threshold": 0.9}, off),
        "ar": (ckpt / "arith-qwen2-ar", "ar", {}, off),
    }


@dataclass(slots=True)
class Row:
    method: str
    concurrency: int
    requests: int
    aggregate_tps: float
    per_request_tps: float
    ttfc_p50_s: float
    ttfc_p99_s: float
    e2e_p50_s: float
    e2e_p99_s: float
    tokens_per_generated: float  # window tokens forwarded per generated token
    tokens_per_forward: float  # generated tokens per forward of one request
    score: float
    failed: int
    kv_bytes_per_seq: float  # mean peak KV pool bytes one sequence held
    roofline_tps: float
    roofline_fraction: float
    # Steady-state steps of exactly `concurrency` one-token decodes in this cell against those of the
    # concurrency-1 cell, round by round (lab.bench.steps): the most batching can gain here. AR only.
    step_ceiling: float | None = None


@dataclass(slots=True)
class _Result:
    tokens: int = 0
    forwards: int = 0
    ttfc: float = 0.0
    e2e: float = 0.0
    correct: float = 0.0
    failed: bool = False
    kv_tokens: int = 0


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return 0.0
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


async def _client(engine: TextEngine, todo: Iterator[tuple[int, arith.Problem]], params: SamplingParams,
                  tag: str, out: list[_Result]) -> None:
    for i, p in todo:
        r = _Result()
        t0 = time.perf_counter()
        text = ""
        req = TextRequest(p.question, params, request_id=f"{tag}-{i}")
        try:
            async for d in engine.astream(req):
                if d.token_ids and not r.ttfc:
                    r.ttfc = time.perf_counter() - t0
                text += d.text
                r.tokens += len(d.token_ids)
                r.forwards = d.forwards
        except Exception:
            r.failed = True
        r.e2e = time.perf_counter() - t0
        r.correct = arith.score(p, text)
        st = engine.stats(req.request_id)
        r.kv_tokens = st.kv_tokens if st is not None else 0
        out.append(r)


def run_level(engine: TextEngine, problems: list[arith.Problem], concurrency: int, max_tokens: int,
              tag: str) -> tuple[list[_Result], float, int]:
    """Every problem through `concurrency` clients: the results, the wall time, the window tokens forwarded."""
    params = SamplingParams(max_tokens=max_tokens)
    todo = iter(enumerate(problems))
    out: list[_Result] = []
    forwarded = engine.core.tokens_forwarded

    async def go() -> float:
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(engine, todo, params, tag, out) for _ in range(concurrency)))
        return time.perf_counter() - t0

    wall = asyncio.run(go())
    return out, wall, engine.core.tokens_forwarded - forwarded


def forward_cost_us(engine: TextEngine, windows: int = 16, window: int = 64, prefix: int = 64,
                    repeats: int = 5) -> float:
    """Microseconds per token of one batched forward of `windows` x `window` tokens over a cached
    prefix (block-causal mask, logits of one row per window): the cost at large token counts."""
    model = engine.model
    ps = engine.config.page_size
    per = -(-(prefix + window) // ps)
    kv = model.new_paged_cache(windows * per + 1, ps)  # its own pool: the engine's may be smaller
    tables = [kv.allocate(per) for _ in range(windows)]
    ws = [Window(list(range(2, 2 + window)), prefix, 0, [window - 1], prefix // 2, 32) for _ in range(windows)]
    inp = build_batch(ws, tables, ps, model.config.max_position_embeddings, model.embed.weight.device)
    with torch.inference_mode():
        model.forward_packed(inp.input_ids, inp.batch, kv, inp.rows)
        best = float("inf")
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.forward_packed(inp.input_ids, inp.batch, kv, inp.rows)
            best = min(best, time.perf_counter() - t0)
    return best / (windows * window) * 1e6


def loadavg() -> float:
    return os.getloadavg()[0]


def reference_tps(engine: TextEngine, problems: list[arith.Problem], max_tokens: int) -> float:
    """Batch-1 TPS of the method's single-sequence decoder (the engine before batching), in this run."""
    params = SamplingParams(max_tokens=max_tokens)
    tokens, t0 = 0, time.perf_counter()
    for p in problems:
        tokens += sum(len(ev.token_ids) for ev in engine.decoder.decode(engine.encode_prompt(p.question), params))
    return tokens / (time.perf_counter() - t0)


def run(levels: list[int], problems: int, seed: int, chosen: list[str], ckpt: Path = CKPT, max_tokens: int = 128,
        device: str = "cpu", rounds: int = 2, reference: int = 0,
        layouts: tuple[str, ...] = ("packed",)) -> dict[str, Any]:
    """Every (method, level) cell once per round, on 1/rounds of the problems, methods rotated at each
    level: a slow spell of the machine lands on every cell alike, not on one level. A second layout
    adds rows named "<method>/<layout>"."""
    load_before = loadavg()
    top = max(levels)
    probs = fresh_problems(problems, seed)
    engines: dict[str, TextEngine] = {}
    for name, (path, method, opts, policy) in methods(ckpt).items():
        for layout in layouts if name in chosen else ():
            cfg = EngineConfig(max_num_seqs=top, adaptive=policy, layout=layout)  # type: ignore[arg-type]
            key = name if layout == layouts[0] else f"{name}/{layout}"
            engines[key] = TextEngine(path, method, opts, device=device, config=cfg)
    for e in engines.values():  # warm-up: first calls pay one-off allocation costs
        e.generate([p.question for p in probs[: min(8, top)]], SamplingParams(max_tokens=max_tokens))
    # The roofline's cost per token: the same architecture for every checkpoint here, so one probe
    # per model is taken and the lowest per-token cost (the machine's best) bounds them all.
    costs = {n: min(forward_cost_us(e), forward_cost_us(e, windows=64)) for n, e in engines.items()}
    cost_us = min(costs.values())
    cells: dict[tuple[str, int], list[Any]] = {}
    refs: dict[str, list[float]] = {}
    order = list(engines)
    logs = {n: record_steps(e) for n, e in engines.items()}
    steps: dict[str, list[dict[int, list[StepSample]]]] = {n: [{} for _ in range(rounds)] for n in engines}
    for r in range(rounds):
        part = probs[r::rounds]
        for i, c in enumerate(levels):
            k = (i + r) % len(order)
            for name in order[k:] + order[:k]:  # rotate who goes first
                n0 = len(logs[name])
                results, wall, forwarded = run_level(engines[name], part, c, max_tokens, f"{name}-c{c}-r{r}")
                steps[name][r][c] = logs[name][n0:]
                cell = cells.setdefault((name, c), [[], 0.0, 0])
                cell[0] += results
                cell[1] += wall
                cell[2] += forwarded
                if reference and i == 0 and name in ("d2f", "fast-dllm", "ar"):  # next to the batch-1 cells
                    ref = reference_tps(engines[name], part[: max(1, reference // rounds)], max_tokens)
                    refs.setdefault(name, []).append(ref)
    rows = [_row(name, c, *cells[name, c], cost_us, engines[name].kv_bytes_per_token)
            for c in levels for name in order]
    if 1 in levels:
        ceilings = {(n, x.batch): x.ceiling for n in order for x in summarize(steps[n])}
        for row in rows:
            row.step_ceiling = ceilings.get((row.method, row.concurrency))
    for e in engines.values():
        e.close()
    return {"rows": [asdict(r) for r in rows],
            "roofline": {"forward_us_per_token": cost_us, "per_model_us_per_token": costs},
            "single_sequence_decoder_tps": {n: statistics.mean(v) for n, v in refs.items()},
            "machine": {"threads": torch.get_num_threads(), "load_before": load_before, "load_after": loadavg(),
                        "cpus": os.cpu_count()},
            "problems": problems, "seed": seed, "max_tokens": max_tokens, "rounds": rounds}


def _row(name: str, c: int, results: list[_Result], wall: float, forwarded: int, cost_us: float,
         kv_bytes_per_token: int) -> Row:
    ok = [r for r in results if not r.failed]
    tokens = sum(r.tokens for r in ok)
    per_gen = forwarded / max(tokens, 1)
    limit = 1e6 / (cost_us * per_gen) if per_gen else 0.0
    agg = tokens / wall
    return Row(
        method=name, concurrency=c, requests=len(results), aggregate_tps=agg,
        per_request_tps=statistics.mean(r.tokens / r.e2e for r in ok) if ok else 0.0,
        ttfc_p50_s=_pct([r.ttfc for r in ok], 0.5), ttfc_p99_s=_pct([r.ttfc for r in ok], 0.99),
        e2e_p50_s=_pct([r.e2e for r in ok], 0.5), e2e_p99_s=_pct([r.e2e for r in ok], 0.99),
        tokens_per_generated=per_gen, tokens_per_forward=tokens / max(sum(r.forwards for r in ok), 1),
        score=sum(r.correct for r in results) / len(results), failed=len(results) - len(ok),
        kv_bytes_per_seq=statistics.mean(r.kv_tokens for r in results) * kv_bytes_per_token,
        roofline_tps=limit, roofline_fraction=agg / limit if limit else 0.0)


def crossover(rows: list[dict[str, Any]], a: str = "ar", b: str = "d2f") -> int | None:
    """The lowest concurrency at which method `a`'s aggregate TPS passes method `b`'s."""
    tps = {(r["method"], r["concurrency"]): r["aggregate_tps"] for r in rows}
    levels = sorted({r["concurrency"] for r in rows})
    return next((c for c in levels if (a, c) in tps and (b, c) in tps and tps[a, c] > tps[b, c]), None)


def print_table(result: dict[str, Any]) -> None:
    rows = result["rows"]
    m = result["machine"]
    print(f"roofline: {result['roofline']['forward_us_per_token']:.1f} us per token forwarded "
          f"(threads {m['threads']}, load {m['load_before']:.2f} -> {m['load_after']:.2f})")
    head = (f"{'method':<13}{'conc':>5}{'agg TPS':>9}{'req TPS':>9}{'ttfc p50':>9}{'p99':>7}{'e2e p50':>8}"
            f"{'p99':>7}{'fwd/gen':>8}{'tok/fwd':>8}{'score':>7}{'fail':>5}{'KV/seq':>8}{'limit':>8}{'frac':>6}")
    print(head)
    for r in rows:
        print(f"{r['method']:<13}{r['concurrency']:>5}{r['aggregate_tps']:>9.0f}{r['per_request_tps']:>9.0f}"
              f"{r['ttfc_p50_s']:>9.3f}{r['ttfc_p99_s']:>7.3f}{r['e2e_p50_s']:>8.3f}{r['e2e_p99_s']:>7.3f}"
              f"{r['tokens_per_generated']:>8.2f}{r['tokens_per_forward']:>8.2f}{r['score']:>7.3f}{r['failed']:>5}"
              f"{r['kv_bytes_per_seq'] / 1024:>7.0f}K{r['roofline_tps']:>8.0f}{r['roofline_fraction']:>6.2f}")
    base = {r["method"]: r["aggregate_tps"] for r in rows if r["concurrency"] == min(x["concurrency"] for x in rows)}
    for r in rows:
        if r["concurrency"] != min(x["concurrency"] for x in rows) and base.get(r["method"]):
            ceiling = r.get("step_ceiling")
            note = f" (steady decode-step ceiling {ceiling:.2f}x)" if ceiling else ""
            gain = r["aggregate_tps"] / base[r["method"]]
            print(f"{r['method']} at {r['concurrency']}: {gain:.2f}x its batch-1 TPS{note}")
    c = crossover(rows)
    print(f"batched AR passes batched D2F at concurrency: {c if c is not None else 'not within the levels run'}")
    for name, tps in result.get("single_sequence_decoder_tps", {}).items():
        print(f"{name}: single-sequence decoder (no engine), batch 1: {tps:.0f} TPS")
    paper = result.get("paper_7b_h200")
    if paper:
        print("on paper, a 7B model on one H200 (same cost model, this run's tokens per step):")
        for m, tps in paper["tps"].items():
            print(f"  {m:<13}" + "".join(f"  c={c}: {v:>7.0f}" for c, v in tps.items()))
        for m, c in paper.get("crossover", {}).items():
            print(f"  AR passes {m} at concurrency {c}")


def plot(result: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(dict.fromkeys(r["method"] for r in rows)):
        pts = sorted((r["concurrency"], r["aggregate_tps"], r["roofline_tps"]) for r in rows if r["method"] == name)
        color = f"C{i}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", color=color, label=name)
        ax.axhline(pts[-1][2], color=color, linestyle="--", linewidth=0.8)  # its compute-bound limit
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent requests")
    ax.set_ylabel("aggregate tokens / s")
    ax.set_title(f"Continuous batching on CPU ({result['machine']['threads']} thread); dashed: roofline limits")
    ax.legend()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main(args: Any) -> None:
    levels = [int(x) for x in args.concurrency.split(",")]
    chosen = args.methods.split(",") if args.methods != "vanilla,fast-dllm,d2f,ar" else list(methods())
    result = run(levels, args.problems, args.seed, chosen, args.checkpoints, device=args.device,
                 rounds=args.rounds, reference=args.reference, layouts=tuple(args.layout.split(",")))
    result["crossover_ar_over_d2f"] = crossover(result["rows"])
    result["paper_7b_h200"] = paper_table(result["rows"])
    if args.concurrency_plot:
        plot(result, args.concurrency_plot)
        result["plot"] = str(args.concurrency_plot)
    if args.json:
        print(json.dumps(result))
    else:
        print_table(result)
        if args.concurrency_plot:
            print(f"plot: {args.concurrency_plot}")


# ---- On paper: the same cost model for a 7B model on one H200 ---------------------------------------

H200 = {"flops": 989e12, "bandwidth": 4.8e12}  # dense bf16 FLOP/s, HBM bytes/s
DREAM_7B = {"params": 7.6e9, "weight_bytes": 2 * 7.6e9, "kv_bytes_per_token": 28 * 2 * 4 * 128 * 2}  # bf16, GQA 4 heads


def paper_tps(c: int, forwarded_per_generated: float, generated_per_forward: float, context: int = 512,
              model: dict[str, float] = DREAM_7B, gpu: dict[str, float] = H200) -> float:
    """Aggregate TPS of c concurrent sequences when a forward costs max(compute, memory):
    2 x params x tokens / FLOP/s, or (weights + every sequence's KV context) / bandwidth."""
    tokens = c * forwarded_per_generated * generated_per_forward  # window tokens in one step
    compute = 2 * model["params"] * tokens / gpu["flops"]
    memory = (model["weight_bytes"] + c * context * model["kv_bytes_per_token"]) / gpu["bandwidth"]
    return c * generated_per_forward / max(compute, memory)


def paper_crossover(ar: tuple[float, float], d2f: tuple[float, float], limit: int = 4096) -> int | None:
    """The lowest concurrency at which AR's paper TPS passes D2F's; each given as
    (window tokens per generated token, generated tokens per forward)."""
    return next((c for c in range(1, limit + 1) if paper_tps(c, *ar) > paper_tps(c, *d2f)), None)


def paper_table(rows: list[dict[str, Any]], levels: tuple[int, ...] = (1, 4, 16, 64, 256)) -> dict[str, Any]:
    """Paper TPS per method at `levels`, with each method's measured window tokens per generated token and
    generated tokens per forward (at concurrency 1 for the fixed methods; lean D2F at the highest level)."""
    params: dict[str, tuple[float, float]] = {}
    for r in sorted(rows, key=lambda r: r["concurrency"]):
        if r["method"] not in params or r["method"] == "d2f-adaptive":
            params[r["method"]] = (r["tokens_per_generated"], r["tokens_per_forward"])
    out: dict[str, Any] = {"tps": {m: {c: paper_tps(c, *p) for c in levels} for m, p in params.items()},
                           "params": params}
    if "ar" in params:
        out["crossover"] = {m: paper_crossover(params["ar"], p) for m, p in params.items() if m != "ar"}
    return out
