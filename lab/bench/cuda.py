"""The CUDA path, checked and measured: `python -m lab.bench cuda [--json]` (needs a GPU).

Prints one JSON line per section (with --json).

1. parity: the embedded D2F student decodes held-out problems on CPU float32, CUDA float32 and
   CUDA bfloat16; same-text fraction against CPU and exact-answer score for each.
2. cache: logits of a KV-cached block-causal window against a full recompute under the same mask.
3. attention: SDPA with the boolean block-causal mask, SDPA with no mask, and FlexAttention with
   a block mask, at LLaDA-8B head shapes (32 heads x 128): milliseconds per call.
4. large shapes: a LLaDA-8B-shaped model cut to a few layers (random bf16 weights): one decode
   forward over a 2-block window with the KV cache of the context, against a full forward over
   context + window (what decoding without a cache pays), per context length.
Timings use CUDA events after warm-up; the ratios inside one run are the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from lab.bench.text import STUDENT
from lab.worlds import arith
from models.attention import block_ids, mask_from_ids, window_mask
from models.config import ModelConfig
from models.engine import TextEngine
from models.sampling import SamplingParams
from models.transformer import Transformer


def _time_ms(fn: Callable[..., Any], *args: Any, iters: int = 20, **kwargs: Any) -> float:
    for _ in range(3):
        fn(*args, **kwargs)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn(*args, **kwargs)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def parity(problems: int) -> dict[str, Any]:
    probs = arith.problems("heldout", problems)
    params = SamplingParams(temperature=0.0, max_tokens=128)
    runs = {"cpu_fp32": ("cpu", torch.float32), "cuda_fp32": ("cuda", torch.float32),
            "cuda_bf16": ("cuda", torch.bfloat16)}
    texts: dict[str, list[str]] = {}
    out: dict[str, Any] = {}
    for name, (dev, dtype) in runs.items():
        eng = TextEngine(STUDENT, "d2f", {"block_size": 32}, dtype=dtype, device=dev)
        comps = eng.generate([p.question for p in probs], params)
        texts[name] = [c.text for c in comps]
        out[name] = {
            "score": sum(arith.score(p, c.text) for p, c in zip(probs, comps, strict=True)) / len(probs),
            "tokens_per_forward": sum(len(c.token_ids) for c in comps) / max(1, sum(c.forwards for c in comps)),
            "same_text_as_cpu": sum(a == b for a, b in zip(texts[name], texts["cpu_fp32"], strict=True)) / len(probs),
        }
    return out


def cache_check(dtype: torch.dtype) -> float:
    """Max |logit difference| of cached-window decoding against a full recompute, on CUDA."""
    eng = TextEngine(STUDENT, "d2f", dtype=dtype, device="cuda")
    model = eng.model
    prompt = torch.tensor([eng.encode_prompt(arith.problems("heldout", 1)[0].question)], device="cuda")
    p, bs = prompt.shape[1], 16
    seq = torch.cat([prompt, torch.randint(0, model.config.vocab_size, (1, 3 * bs), device="cuda")], dim=1)
    ids = block_ids(p, seq.shape[1], bs, "cuda")
    with torch.no_grad():
        full = model(seq, mask=window_mask(ids, 0, seq.shape[1])).float()
        cache = model.new_cache(1, seq.shape[1])
        model(seq[:, : p + bs], mask=window_mask(ids, 0, p + bs), cache=cache, commit=p + bs)
        win = model(seq[:, p + bs:], mask=window_mask(ids, p + bs, seq.shape[1]), cache=cache).float()
    return (full[0, p + bs:] - win[0]).abs().max().item()


def attention(lengths: tuple[int, ...] = (1024, 4096)) -> list[dict[str, Any]]:
    rows = []
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
        flex = torch.compile(flex_attention)
    except Exception:  # FlexAttention is optional: report its absence
        flex = None
    for n in lengths:
        q, k, v = (torch.randn(1, 32, n, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
        ids = block_ids(n // 8, n, 32, "cuda")
        mask = mask_from_ids(ids, ids)
        sdpa = F.scaled_dot_product_attention
        row: dict[str, Any] = {"tokens": n, "sdpa_block_mask_ms": _time_ms(sdpa, q, k, v, attn_mask=mask),
                               "sdpa_no_mask_ms": _time_ms(sdpa, q, k, v)}
        if flex is not None:
            try:
                bid = ids
                bm = create_block_mask(lambda b, h, qi, ki, bid=bid: bid[ki] <= bid[qi], None, None, n, n,
                                       device="cuda")
                row["flex_block_mask_ms"] = _time_ms(flex, q, k, v, block_mask=bm)
                ref = sdpa(q, k, v, attn_mask=mask)
                row["flex_vs_sdpa_max_abs"] = (flex(q, k, v, block_mask=bm) - ref).abs().max().item()
            except Exception as e:
                row["flex_error"] = repr(e)[:200]
        rows.append(row)
    return rows


def large_shapes(layers: int = 4, contexts: tuple[int, ...] = (512, 2048, 4096)) -> list[dict[str, Any]]:
    cfg = ModelConfig(layout="llada", vocab_size=126464, hidden_size=4096, num_layers=layers, num_heads=32,
                      num_kv_heads=32, intermediate_size=12288, max_position_embeddings=8192,
                      rope_theta=500000.0, mask_token_id=126336, eos_token_id=126081)
    with torch.device("cuda"):  # 1.3B parameters: initialise on the GPU, not on the host
        model = Transformer(cfg).to(torch.bfloat16).eval()
    window = 64  # two D2F blocks of 32 in flight
    rows = []
    for ctx in contexts:
        total = ctx + window
        x = torch.randint(0, cfg.vocab_size, (1, total), device="cuda")
        ids = block_ids(ctx // 4, total, 32, "cuda")
        cache = model.new_cache(1, total)
        with torch.no_grad():
            model(x[:, :ctx], mask=window_mask(ids, 0, ctx), cache=cache, commit=ctx)
            wmask = window_mask(ids, ctx, total)
            cached = _time_ms(model, x[:, ctx:], mask=wmask, cache=cache, iters=10)
            full = _time_ms(model, x, mask=window_mask(ids, 0, total), iters=10)
        rows.append({"context": ctx, "layers": layers, "cached_window_ms": cached, "full_forward_ms": full,
                     "speedup": full / cached})
    return rows


def main(args: Any) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this benchmark checks the GPU path")
    sections: dict[str, Callable[[], Any]] = {
        "device": lambda: {"name": torch.cuda.get_device_name(), "torch": torch.__version__},
        "parity": lambda: parity(args.problems),
        "cache_max_abs": lambda: {"fp32": cache_check(torch.float32), "bf16": cache_check(torch.bfloat16)},
        "large_shapes": large_shapes,
        "attention": attention,  # last: FlexAttention compiles first
    }
    # One JSON line per section as soon as it is measured, so a time limit keeps what was done.
    for name, fn in sections.items():
        value = fn()
        print(json.dumps({name: value}) if args.json else f"{name}: {json.dumps(value, indent=2)}", flush=True)
