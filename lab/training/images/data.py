"""Training batches from the shapes world for the image models: t2i, edit and VQA examples.

Images enter both models as the shared VAE's continuous tokens (`ImageTokenizer.encode`: 2x2 patches
of the 16-channel latent, LayerNormed: 9 tokens of 64 for a 48x48 render), so every scene is encoded
once into `FeatureBank` and batches only gather rows. Each model has its own prompt layout (the one
its generation code builds, see `orthus.py` / `nextstep.py`); a layout turns an example into
`Segment`s and `collate` turns segments into one right-padded `ImageBatch`. Right padding is safe
with a causal mask: real positions never see the padding after them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from lab.training.loop import TrainConfig, train
from lab.worlds import shapes
from lab.worlds.tokenizer import EOS_TOKEN, MASK_TOKEN
from models.nextstep.vae import ImageTokenizer, from_uint8

# Special tokens of both models; one tokenizer serves both so a single tokenizer.json ships with each.
BOS_TOKEN, SEP_TOKEN = "<s>", "<sep>"
ORTHUS_SPECIALS = {"boi": "<racm3:break>", "eoi": "<eoss>", "image": "<image>"}
NEXTSTEP_SPECIALS = {"boi": "<|begin_of_image|>", "eoi": "<|end_of_image|>", "placeholder": "<|image_placeholder|>",
                     "area": "<|image_area|>", "pad": "<|image_pad|>"}
SPECIAL_TOKENS = (EOS_TOKEN, MASK_TOKEN, BOS_TOKEN, SEP_TOKEN, *ORTHUS_SPECIALS.values(),
                  *NEXTSTEP_SPECIALS.values())
VOCAB_SIZE = 384  # the world has ~60 words; a small vocab keeps embeddings and the LM head tiny
# 48 = 3 grid cells x 16 pixels, so each of the 3x3 VAE tokens (f8 latent, 2x2 patches) covers exactly one
# cell and holds at most one shape. At 32 pixels 4 tokens straddled cells and every token mixed parts of
# up to four shapes: colour binding failed (Orthus T2I 0.36, NextStep 0.52, Orthus edit 0.00).
IMAGE_SIZE = 48
RELATIVE_MAX = 800  # of the ~1100 training relative prompts the world has
Task = Literal["t2i", "edit", "vqa"]


def train_tokenizer(n: int = 4000) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB_SIZE, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    # "2*2" is NextStep's image-area text; include it so it tokenizes compactly.
    tok.train_from_iterator([*shapes.corpus_texts(n, seed=1234), "2*2"], trainer)
    return tok


def save_tokenizer(tok: Tokenizer, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": BOS_TOKEN, "eos_token": EOS_TOKEN,
        "pad_token": EOS_TOKEN, "sep_token": SEP_TOKEN, "additional_special_tokens": list(SPECIAL_TOKENS[2:]),
    }, indent=2) + "\n")


def special_id(tok: Tokenizer, token: str) -> int:
    i = tok.token_to_id(token)
    if i is None:
        raise KeyError(f"tokenizer lacks special token {token!r}")
    return i


def render_batch(scenes: Sequence[shapes.Scene]) -> torch.Tensor:
    """Renders in [-1, 1], (N, 3, IMAGE_SIZE, IMAGE_SIZE)."""
    arr = np.stack([shapes.render(s, IMAGE_SIZE) for s in scenes])
    return from_uint8(torch.from_numpy(arr))


@dataclass(slots=True)
class Example:
    task: Task
    text: str  # caption, instruction or question
    target: shapes.Scene | None  # image to generate (t2i, edit)
    source: shapes.Scene | None = None  # input image (edit, vqa)
    answer: str = ""  # vqa only


def make_pool(n: int, seed: int, mix: dict[str, float], relative_scenes: int = 1) -> list[Example]:
    """About n training examples, split over the tasks by `mix` weights (held-out scenes excluded), plus
    relative prompts drawn `relative_scenes` times (each draw: up to RELATIVE_MAX prompts, one scene each)."""
    if relative_scenes < 0:
        raise ValueError(f"relative_scenes must be >= 0, got {relative_scenes}")
    total = sum(mix.values())
    out: list[Example] = []
    if (k := round(n * mix.get("t2i", 0) / total)) > 0:
        out += [Example("t2i", shapes.caption(s), s) for s in shapes.scenes("train", k, seed)]
        # Relative prompts ("a red circle left of a blue square") fix only the order of the pair, so
        # the model must learn where the pair may go; several draws give a prompt several such scenes.
        for j in range(relative_scenes):
            rels = shapes.relations("train", min(RELATIVE_MAX, k // 6), seed + 1000 * j)
            out += [Example("t2i", r.text, s) for r, s in rels]
    if (k := round(n * mix.get("edit", 0) / total)) > 0:
        out += [Example("edit", e.instruction, e.target, e.source) for e in shapes.edits("train", k, seed)]
    if (k := round(n * mix.get("vqa", 0) / total)) > 0:
        out += [Example("vqa", q.text, None, q.scene, q.answer) for q in shapes.questions("train", k, seed)]
    return out


class FeatureBank:
    """VAE tokens [N_tok, C] of every scene in a pool, encoded once (deterministic posterior mean)."""

    def __init__(self, vae: ImageTokenizer, examples: Sequence[Example], batch: int = 256) -> None:
        keys: dict[str, shapes.Scene] = {}
        for ex in examples:
            for s in (ex.source, ex.target):
                if s is not None:
                    keys.setdefault(s.key, s)
        scenes = list(keys.values())
        dev = next(vae.parameters()).device
        # Kept on the CPU: batches are collated there and moved to the training device whole.
        feats = [vae.encode(render_batch(scenes[i:i + batch]).to(dev)).cpu() for i in range(0, len(scenes), batch)]
        table = torch.cat(feats) if feats else torch.empty(0)
        self.rows = {s.key: table[i] for i, s in enumerate(scenes)}

    def __getitem__(self, scene: shapes.Scene) -> torch.Tensor:
        return self.rows[scene.key]


# A segment is text ids, or an image: (features [N, C], is_loss_target).
Segment = list[int] | tuple[torch.Tensor, bool]
# (example, bank, rng for condition dropout) -> (segments, answer ids incl. the stop token)
Layout = Callable[[Example, FeatureBank, random.Random], tuple[list[Segment], list[int]]]


@dataclass(slots=True)
class ImageBatch:
    ids: torch.Tensor  # [B, T] right-padded
    valid: torch.Tensor  # [B, T] False on padding
    feats: torch.Tensor  # [M, C] features of every image slot, row-major over `ids`
    slot_mask: torch.Tensor  # [B, T] True where `feats` goes in
    target_pos: torch.Tensor  # [K] flat indices (b * T + t) of generated-image slots
    target_feats: torch.Tensor  # [K, C] their clean features (the diffusion / flow targets)
    lm_targets: torch.Tensor  # [B, T] next-token targets, -100 where there is no text loss

    def to(self, device: torch.device | str) -> ImageBatch:
        return ImageBatch(*(getattr(self, f).to(device) for f in self.__dataclass_fields__))


def collate(rows: Sequence[tuple[list[Segment], list[int]]], pad_id: int, placeholder: int,
            text_loss: bool = True) -> ImageBatch:
    """Segments -> batch. LM targets: the answer ids (VQA), plus every prompt text token when
    `text_loss` (the LM objective on captions / instructions)."""
    seqs, slots, tgt, feats, tfeats, lm = [], [], [], [], [], []
    for segs, answer in rows:
        ids: list[int] = []
        slot: list[bool] = []
        is_tgt: list[bool] = []
        lm_row: list[int] = []  # target for the token at each position, set on the position before it
        for seg in segs:
            if isinstance(seg, tuple):
                f, target = seg
                ids += [placeholder] * f.shape[0]
                slot += [True] * f.shape[0]
                is_tgt += [target] * f.shape[0]
                lm_row += [-100] * f.shape[0]
                feats.append(f)
                if target:
                    tfeats.append(f)
            else:
                ids += seg
                slot += [False] * len(seg)
                is_tgt += [False] * len(seg)
                lm_row += list(seg) if text_loss else [-100] * len(seg)
        ids += answer
        slot += [False] * len(answer)
        is_tgt += [False] * len(answer)
        lm_row += answer
        seqs.append(ids)
        slots.append(slot)
        tgt.append(is_tgt)
        lm.append([*lm_row[1:], -100])  # position t predicts token t + 1
    t = max(len(s) for s in seqs)
    b = len(seqs)
    ids_t = torch.full((b, t), pad_id, dtype=torch.long)
    valid = torch.zeros(b, t, dtype=torch.bool)
    slot_t = torch.zeros(b, t, dtype=torch.bool)
    tgt_t = torch.zeros(b, t, dtype=torch.bool)
    lm_t = torch.full((b, t), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        n = len(s)
        ids_t[i, :n] = torch.tensor(s)
        valid[i, :n] = True
        slot_t[i, :n] = torch.tensor(slots[i])
        tgt_t[i, :n] = torch.tensor(tgt[i])
        lm_t[i, :n] = torch.tensor(lm[i])
    # Image slots' next token is never a text target (the loss there is the diffusion / flow one).
    lm_t[slot_t] = -100
    c = feats[0].shape[-1] if feats else 1
    return ImageBatch(ids_t, valid, torch.cat(feats) if feats else torch.empty(0, c),
                      slot_t, tgt_t.flatten().nonzero().squeeze(1),
                      torch.cat(tfeats) if tfeats else torch.empty(0, c), lm_t)


def _target_rows(batch: ImageBatch) -> torch.Tensor:
    """[M] mask over `batch.feats`: True on generated-image rows (those of `target_pos`, in order)."""
    is_target = torch.zeros(batch.slot_mask.numel(), dtype=torch.bool, device=batch.feats.device)
    is_target[batch.target_pos] = True
    return is_target[batch.slot_mask.flatten()]


def with_samples(batch: ImageBatch, samples: torch.Tensor, rate: float, gen: torch.Generator) -> torch.Tensor:
    """batch.feats with a `rate` share of the generated-image tokens (rows of `batch.target_pos`, in order)
    replaced by `samples` [K, C]: scheduled sampling's inputs. Source images are never replaced."""
    rows = _target_rows(batch)
    keep = torch.rand(samples.shape[0], 1, generator=gen).to(samples.device) >= rate
    out = batch.feats.clone()
    out[rows] = torch.where(keep, batch.feats[rows], samples.to(out.dtype))
    return out


def with_context_noise(batch: ImageBatch, feats: torch.Tensor, std: float, gen: torch.Generator) -> torch.Tensor:
    """`feats` with Gaussian noise of `std` added to the generated-image rows, where they are the model's
    input (its context for the next token); the targets stay clean. Source images stay clean too: at
    inference they are real encodings, while the generated context is the model's own samples."""
    if not std:
        return feats
    rows = _target_rows(batch)
    out = feats.clone()
    out[rows] += std * torch.randn(int(rows.sum()), feats.shape[1], generator=gen).to(feats.device, feats.dtype)
    return out


class ImageStream:
    """Endless shuffled batches over a fixed example pool (the `ProblemStream` contract of loop.train)."""

    def __init__(self, examples: Sequence[Example], bank: FeatureBank, layout: Layout, placeholder: int,
                 pad_id: int, batch_size: int, seed: int, text_loss: bool = True) -> None:
        if not examples:
            raise ValueError("empty example pool")
        self.examples, self.bank, self.layout = list(examples), bank, layout
        self.placeholder, self.pad_id, self.batch_size, self.text_loss = placeholder, pad_id, batch_size, text_loss
        self.rng = random.Random(seed)
        self.order: list[int] = []

    def next(self) -> ImageBatch:
        if len(self.order) < self.batch_size:
            fresh = list(range(len(self.examples)))
            self.rng.shuffle(fresh)
            self.order += fresh
        idx, self.order = self.order[:self.batch_size], self.order[self.batch_size:]
        rows = [self.layout(self.examples[i], self.bank, self.rng) for i in idx]
        return collate(rows, self.pad_id, self.placeholder, self.text_loss)


def train_phase(model: torch.nn.Module, stream: ImageStream, steps: int, lr: float, batch: int, seed: int,
                loss: Callable[[ImageBatch, torch.Generator], torch.Tensor], name: str, log_every: int,
                device: str, max_warmup: int = 100) -> list[float]:
    """One training phase (its own optimizer and schedule) of an image model; its losses."""
    tc = TrainConfig(steps=steps, lr=lr, batch_size=batch, warmup=min(max_warmup, steps // 10 + 1), seed=seed,
                     log_every=log_every, device=device)
    return train(model, stream, tc, loss, name)  # type: ignore[arg-type]  # duck-typed stream/batch


@dataclass(slots=True)
class Phase:
    """One phase of a recipe; `stream` is built when the phase starts (a skipped phase encodes nothing)."""

    name: str
    steps: int
    lr: float
    seed: int
    stream: Callable[[], ImageStream]
    max_warmup: int = 100
    loss: Callable[[ImageBatch, torch.Generator], torch.Tensor] | None = None  # None: the recipe's loss


def train_phases(model: torch.nn.Module, phases: Sequence[Phase], batch: int,
                 loss: Callable[[ImageBatch, torch.Generator], torch.Tensor], log_every: int,
                 device: str) -> list[float]:
    """The phases in order, each with its own optimizer and schedule (a later one at a lower rate on a
    pool of its own, e.g. NextStep's edit phase); phases of 0 steps are skipped. All their losses."""
    losses: list[float] = []
    for ph in phases:
        if ph.steps:
            losses += train_phase(model, ph.stream(), ph.steps, ph.lr, batch, ph.seed, ph.loss or loss, ph.name,
                                  log_every, device, ph.max_warmup)
    return losses
