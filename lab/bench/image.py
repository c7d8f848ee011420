"""Image benchmark on held-out shapes problems: T2I score, edit success, VQA accuracy and throughput.

Per backend (Orthus, NextStep; both decode through the shared tiny VAE):
- t2i_score: mean `score_t2i` of images generated one request at a time (also the latency run);
- relative_score: mean `score_relation` on held-out relative prompts ("a red circle left of a blue
  square", GenEval's position task; at most the ~120 the world holds out), batched by 8;
- edit_success: mean `score_edit`; vqa_accuracy: mean `score_vqa` (None for NextStep, which has no
  understanding path);
- s_per_image / images_per_s_1: wall time of the one-at-a-time T2I run;
- images_per_s_8: the same prompts in groups of 8 concurrent requests, each group batched into ONE call
  of the backend's `generate` (what a server that batches requests gets).
The models run through `models.images`, the image workers' own layer, so every request has its own
seeded generator and results do not depend on batching beyond rounding (a group of 8 is padded to its
longest prompt's bucket; see models/images). Absolute times depend on the machine; compare rows, not runs.
"""

from __future__ import annotations

import functools
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
from models.images import ImageBackend, ImageJob, ImageParts, NextStepBackend, OrthusBackend
from models.images import load_backend as load_image_backend
from models.nextstep.model import NextStep
from models.nextstep.vae import ImageTokenizer, to_uint8
from models.orthus.model import Orthus

CKPT = Path(__file__).resolve().parents[2] / "checkpoints"
BACKENDS = ("orthus", "nextstep")
SIZE = IMAGE_SIZE  # the shapes checkpoints' native resolution
CONCURRENCY = 8
RELATIVE_HELDOUT = 100  # of the ~125 held-out relative prompts
ANSWER_TOKENS = 8

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


@dataclass(frozen=True, slots=True)
class Sampling:
    """The bench's settings per model; request i of a call with seed s is seeded s + i."""

    steps: int
    cfg_scale: float = 3.0  # T2I
    text_scale: float = 3.0  # editing: instruction and image guidance
    image_scale: float = 1.5


SAMPLING = {"orthus": Sampling(steps=50), "nextstep": Sampling(steps=25)}


class _Codec:
    """An in-memory `tokenizers.Tokenizer` as the image layer's TextCodec (TextTokenizer reads a directory)."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)


def bench_backend(be: ImageBackend, s: Sampling) -> Backend:
    """The bench's three calls on an image-layer backend, i.e. exactly what the image worker serves."""

    def jobs(kind: str, texts: list[str], seed: int, sources: Images | None = None) -> list[ImageJob]:
        edit = kind == "edit"
        return [ImageJob(kind, t, s.steps, s.text_scale if edit else s.cfg_scale, s.image_scale if edit else 0.0,
                         seed + i, SIZE, SIZE, False, None if sources is None else sources[i])
                for i, t in enumerate(texts)]

    def t2i(captions: list[str], seed: int) -> Images:
        return to_uint8(be.generate(jobs("t2i", captions, seed), None)).cpu().numpy()

    def edit(images: Images, instructions: list[str], seed: int) -> Images:
        return to_uint8(be.generate(jobs("edit", instructions, seed, images), None)).cpu().numpy()

    def next_token(caption: str, context: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        return be.next_token(caption, context, gen, s.steps, s.cfg_scale)

    answer = functools.partial(_answer, be) if isinstance(be, OrthusBackend) else None
    return Backend(be.name, t2i, edit, answer, be.parts.vae, next_token)


def _answer(be: OrthusBackend, images: Images, questions: list[str]) -> list[str]:
    ids = be.understand(be.question_prompts(images, questions), ANSWER_TOKENS)
    return [be.parts.tokenizer.decode(a) for a in ids]


def orthus_backend(model: Orthus, vae: ImageTokenizer, tok: Tokenizer, steps: int = SAMPLING["orthus"].steps,
                   cfg_scale: float = 3.0, text_scale: float = 3.0, image_scale: float = 1.5) -> Backend:
    parts = ImageParts(vae, _Codec(tok), SIZE)
    return bench_backend(OrthusBackend(model, parts), Sampling(steps, cfg_scale, text_scale, image_scale))


def nextstep_backend(model: NextStep, vae: ImageTokenizer, tok: Tokenizer, steps: int = SAMPLING["nextstep"].steps,
                     cfg_scale: float = 3.0, cfg_img_scale: float = 1.5) -> Backend:
    parts = ImageParts(vae, _Codec(tok), SIZE)
    return bench_backend(NextStepBackend(model, parts), Sampling(steps, cfg_scale, cfg_scale, cfg_img_scale))


def load_backend(name: str, checkpoints: Path, device: str = "cpu") -> Backend:
    d = checkpoints / f"shapes-{name}"
    if name not in SAMPLING:
        raise ValueError(f"unknown backend {name!r}; expected one of {BACKENDS}")
    if not d.is_dir():
        raise FileNotFoundError(f"{d} not found: train it with `python -m lab.training.images --only {name}`")
    be, _ = load_image_backend(name, d, SIZE, device)
    return bench_backend(be, SAMPLING[name])


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
