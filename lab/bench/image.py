"""Image benchmark on held-out shapes problems: T2I score, edit success, VQA accuracy and throughput.

Per backend (Orthus, NextStep; both decode through the shared tiny VAE):
- t2i_score: mean `score_t2i` of images generated one request at a time (also the latency run);
- relative_score: mean `score_relation` on held-out relative prompts ("a red circle left of a blue
  square", GenEval's position task; at most the ~120 the world holds out), batched by 8;
- edit_success: mean `score_edit`; vqa_accuracy: mean `score_vqa` (None for NextStep, which has no
  understanding path);
- s_per_image / images_per_s_1: wall time of the one-at-a-time T2I run;
- images_per_s_8: the same prompts in groups of 8 concurrent requests, each group batched into ONE call
  of the model's generate function (what a server that batches requests gets).
Every request has its own seeded generator where the model supports it, so results do not depend on
batching. Absolute times depend on the machine; compare rows, not runs.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer

from lab.bench.image_breakdown import edit_breakdown
from lab.training.images.data import IMAGE_SIZE
from lab.worlds import shapes, shapes_score
from models.nextstep.generate import GenerationConfig, left_pad, t2i_rows
from models.nextstep.generate import edit_image as ns_edit
from models.nextstep.generate import text_to_image as ns_t2i
from models.nextstep.head import sample_token
from models.nextstep.model import NextStep, causal_mask
from models.nextstep.vae import ImageTokenizer, from_uint8, to_uint8, token_layer_norm
from models.orthus.head import CFG, make_scheduler
from models.orthus.model import Orthus
from models.orthus.prompt import build_prompt
from models.orthus.vision import from_head_space

CKPT = Path(__file__).resolve().parents[2] / "checkpoints"
BACKENDS = ("orthus", "nextstep")
SIZE = IMAGE_SIZE  # the shapes checkpoints' native resolution
CONCURRENCY = 8
RELATIVE_HELDOUT = 100  # of the ~125 held-out relative prompts

Images = np.ndarray  # (B, H, W, 3) uint8


@dataclass(slots=True)
class Backend:
    """One model behind three batched calls; `answer` is None when the model cannot do VQA."""

    name: str
    t2i: Callable[[list[str], int], Images]  # (captions, seed) -> images
    edit: Callable[[Images, list[str], int], Images]  # (sources, instructions, seed) -> images
    answer: Callable[[Images, list[str]], list[str]] | None = None
    vae: ImageTokenizer | None = None
    # (caption, the first k image tokens [k, C] as context, generator) -> image token k [C], with T2I
    # guidance: what the model draws next after a given context (`image_context`'s probe).
    next_token: Callable[[str, torch.Tensor, torch.Generator], torch.Tensor] | None = None


def _decode(vae: ImageTokenizer, tokens: torch.Tensor) -> Images:
    p = next(vae.parameters())
    return to_uint8(vae.decode(tokens.to(p.device, p.dtype), (SIZE // 16, SIZE // 16))).cpu().numpy()


def _encode(vae: ImageTokenizer, images: Images) -> torch.Tensor:
    p = next(vae.parameters())
    return vae.encode(from_uint8(torch.from_numpy(images)).to(p.device, p.dtype))


def orthus_backend(model: Orthus, vae: ImageTokenizer, tok: Tokenizer, steps: int = 50, cfg_scale: float = 3.0,
                   text_scale: float = 3.0, image_scale: float = 1.5) -> Backend:
    cfg = model.config
    n = (SIZE // 16) ** 2

    def gens(k: int, seed: int) -> list[torch.Generator]:
        return [torch.Generator().manual_seed(seed + i) for i in range(k)]

    def t2i(captions: list[str], seed: int) -> Images:
        prompts = [build_prompt(cfg, tok.encode(c).ids) for c in captions]
        z = model.generate_image(prompts, build_prompt(cfg), cfg_scale, steps, gens(len(captions), seed), n)
        return _decode(vae, z)

    def edit(images: Images, instructions: list[str], seed: int) -> Images:
        src = _encode(vae, images).to(model.device)
        z = model.edit_image(list(src), [tok.encode(s).ids for s in instructions], text_scale, image_scale, steps,
                             gens(len(instructions), seed), n)
        return _decode(vae, z)

    def answer(images: Images, questions: list[str]) -> list[str]:
        src = _encode(vae, images).to(model.device)
        prompts = [build_prompt(cfg, z, tok.encode(q).ids) for z, q in zip(src, questions, strict=True)]
        return [tok.decode(ids) for ids in model.understand(prompts, max_new_tokens=8)]

    def next_token(caption: str, context: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        last = []
        for p in (build_prompt(cfg, tok.encode(caption).ids), build_prompt(cfg)):  # cond, uncond
            ids = [*p.ids, cfg.boi_token_id, *[cfg.image_token_id] * len(context)]
            h, _ = model(torch.tensor([ids], device=model.device), [context.to(model.device)] if len(context) else None)
            last.append(h[0, -1])
        x = model.head.sample(torch.stack(last), make_scheduler("ddim"), steps, gen, CFG(cfg_scale))
        return from_head_space(x, cfg.latent_scale)[0]

    return Backend("orthus", t2i, edit, answer, vae, next_token)


def nextstep_backend(model: NextStep, vae: ImageTokenizer, tok: Tokenizer, steps: int = 25, cfg_scale: float = 3.0,
                     cfg_img_scale: float = 1.5) -> Backend:
    def encode(text: str) -> list[int]:
        return tok.encode(text).ids

    # The tiny models were trained with an empty negative prompt (training/images/nextstep.py).
    t2i_gen = GenerationConfig(cfg_scale=cfg_scale, steps=steps, negative_prompt="")
    edit_gen = GenerationConfig(cfg_scale=cfg_scale, cfg_img_scale=cfg_img_scale, steps=steps, negative_prompt="")

    def t2i(captions: list[str], seed: int) -> Images:
        gen = torch.Generator().manual_seed(seed)
        return to_uint8(ns_t2i(model, vae, encode, captions, SIZE, SIZE, t2i_gen, gen)).cpu().numpy()

    def edit(images: Images, instructions: list[str], seed: int) -> Images:
        p = next(vae.parameters())
        src = from_uint8(torch.from_numpy(images)).to(p.device, p.dtype)
        gen = torch.Generator().manual_seed(seed)
        return to_uint8(ns_edit(model, vae, encode, src, instructions, edit_gen, gen)).cpu().numpy()

    def next_token(caption: str, context: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        c, grid = model.config, (SIZE // 16, SIZE // 16)
        rows = [r + [c.image_placeholder_id] * len(context) for r in t2i_rows(model, encode, [caption], grid, t2i_gen)]
        ids, valid = left_pad(rows, c.pad_id)
        feats = context.repeat(len(rows), 1) if len(context) else None
        dev = model.backbone.embed.weight.device
        h = model(ids.to(dev), None if feats is None else feats.to(dev), mask=causal_mask(valid.to(dev)))[:, -1]
        tok = sample_token(model.image_head, model.condition(h), 1, cfg_scale=t2i_gen.cfg_scale,
                           steps=t2i_gen.steps, shift=t2i_gen.shift, generator=gen, token_dim=c.token_dim)
        return token_layer_norm(tok)[0]

    return Backend("nextstep", t2i, edit, None, vae, next_token)


def load_backend(name: str, checkpoints: Path, device: str = "cpu") -> Backend:
    from models.nextstep.checkpoint import load_nextstep
    from models.orthus.checkpoint import load_orthus

    d = checkpoints / f"shapes-{name}"
    if not d.is_dir():
        raise FileNotFoundError(f"{d} not found: train it with `python -m lab.training.images --only {name}`")
    vae = ImageTokenizer.from_pretrained(d / "vae").to(device)
    tok = Tokenizer.from_file(str(d / "tokenizer.json"))
    if name == "orthus":
        return orthus_backend(load_orthus(d, device=device), vae, tok)
    if name == "nextstep":
        return nextstep_backend(load_nextstep(d, device=device), vae, tok)
    raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")


@dataclass(slots=True)
class Row:
    backend: str
    t2i_score: float
    relative_score: float
    edit_success: float
    vqa_accuracy: float | None
    s_per_image: float
    images_per_s_1: float
    images_per_s_8: float


def _chunks(n: int, k: int) -> list[range]:
    return [range(i, min(i + k, n)) for i in range(0, n, k)]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def evaluate(b: Backend, problems: int, device: str = "cpu", seed: int = 0) -> Row:
    scenes = shapes.scenes("heldout", problems, seed)
    captions = [shapes.caption(s) for s in scenes]
    b.t2i(captions[:1], seed)  # warm-up: first-call allocations would otherwise land on request 0
    _sync(device)
    t0 = time.perf_counter()
    singles = [b.t2i([c], seed + i)[0] for i, c in enumerate(captions)]
    _sync(device)
    t1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    for r in _chunks(problems, CONCURRENCY):
        b.t2i([captions[i] for i in r], seed + r.start)
    _sync(device)
    t8 = time.perf_counter() - t0
    t2i = float(np.mean([shapes_score.score_t2i(s, img) for s, img in zip(scenes, singles, strict=True)]))

    rels = shapes.relations("heldout", min(problems, RELATIVE_HELDOUT), seed)
    rel_scores = []
    for r in _chunks(len(rels), CONCURRENCY):
        out = b.t2i([rels[i][0].text for i in r], seed + r.start)
        rel_scores += [shapes_score.score_relation(rels[i][0], img) for i, img in zip(r, out, strict=True)]

    edits = shapes.edits("heldout", problems, seed)
    scores = []
    for r in _chunks(problems, CONCURRENCY):
        src = np.stack([shapes.render(edits[i].source, SIZE) for i in r])
        out = b.edit(src, [edits[i].instruction for i in r], seed + r.start)
        scores += [shapes_score.score_edit(edits[i], img) for i, img in zip(r, out, strict=True)]
    vqa = None
    if b.answer is not None:
        qs = shapes.questions("heldout", problems, seed)
        correct = []
        for r in _chunks(problems, CONCURRENCY):
            imgs = np.stack([shapes.render(qs[i].scene, SIZE) for i in r])
            texts = b.answer(imgs, [qs[i].text for i in r])
            correct += [shapes_score.score_vqa(qs[i], t) for i, t in zip(r, texts, strict=True)]
        vqa = float(np.mean(correct))
    return Row(b.name, t2i, float(np.mean(rel_scores)), float(np.mean(scores)), vqa, t1 / problems, problems / t1,
               problems / t8)


def run(problems: int, backends: Sequence[Backend | str], device: str = "cpu",
        checkpoints: Path = CKPT) -> list[Row]:
    """Rows for each backend (a Backend, or a name loaded from `checkpoints`)."""
    if problems <= 0:
        raise ValueError(f"problems must be positive, got {problems}")
    loaded = [load_backend(b, checkpoints, device) if isinstance(b, str) else b for b in backends]
    return [evaluate(b, problems, device) for b in loaded]


def _fmt(v: Any) -> str:
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


def main(args: Any) -> None:
    names = [s for s in str(getattr(args, "backends", None) or ",".join(BACKENDS)).split(",") if s]
    checkpoints = Path(getattr(args, "checkpoints", None) or CKPT)
    if getattr(args, "context", False):
        from lab.bench.image_context import context_probe, format_probe

        for name in names:
            print(format_probe(name, context_probe(load_backend(name, checkpoints, args.device), args.problems)))
        return
    if getattr(args, "breakdown", False):
        for name in names:
            b = load_backend(name, checkpoints, args.device)
            print(f"{name}: {edit_breakdown(b.edit, args.problems, size=SIZE).format()}\n")
        return
    rows = run(args.problems, names, args.device, checkpoints)
    if args.json:
        print(json.dumps({"rows": [asdict(r) for r in rows]}, indent=2))
        return
    cols = list(Row.__dataclass_fields__)
    table = [cols] + [[_fmt(getattr(r, c)) for c in cols] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(cols))]
    for line in table:
        print("  ".join(cell.rjust(w) for cell, w in zip(line, widths, strict=True)))
