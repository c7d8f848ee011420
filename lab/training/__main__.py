"""Train the embedded tiny text models: `python -m lab.training` (2 CPU cores, ≈ 60 min
idle; `--device cuda` runs the same recipe on a GPU).

Produces, in HF formats loaded by the same code as real checkpoints:
  <out>/arith-qwen2-ar        autoregressive baseline (Qwen2 layout), trained first
  <out>/arith-dream-teacher   Dream-layout masked-diffusion teacher, initialised from the AR model
  <out>/arith-d2f-lora        D2F student: a PEFT LoRA adapter on the teacher

The recipe follows Dream: the diffusion teacher starts from the AR model's weights and keeps its
next-token readout (logits shifted by one), so masked-diffusion training only has to teach it to
fill masks, not arithmetic and copying from scratch. Half of the teacher's samples get
decoding-state masks (a clean answer prefix, a partly masked block, everything after it masked:
the states a semi-autoregressive sampler visits), half uniform LLaDA masks (which keep copying
from the question trained), numbers masked together (`tie_masks`), then a refine phase of the same
objective at a third of the rate. Held-out exact answers went from 0.77 (vanilla) / 0.69 (D2F) with
the random-init LLaDA-layout teacher (`--teacher-layout llada`) to 0.87 / 0.89 with the AR-initialised
teacher and to 0.94 / 0.96 with the refine phase (docs/history.md has the table).

`--teacher-init DIR` resumes the teacher from a checkpoint, running only the phases given steps:
the committed checkpoints are this recipe run in two sittings, the second being
`--only teacher --only student --teacher-init checkpoints/arith-dream-teacher --teacher-tied-steps 0`
on the teacher of the first (AR 1000, tied 3000, no refine): the same phases, data and seeds as
one sitting (every phase seeds its own data stream and masks, the student re-seeds torch).
"""

from __future__ import annotations

import argparse
import functools
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from lab.training.data import SEQ_LEN, ProblemStream, build_tokenizer
from lab.training.loop import TrainConfig, train
from lab.training.objectives import ar_loss, d2f_distill_loss, masked_diffusion_loss
from lab.worlds.tokenizer import EOS_TOKEN, MASK_TOKEN
from models.checkpoint import load_model, save_model
from models.config import ModelConfig
from models.lora import apply_lora, save_adapter
from models.transformer import Transformer

STUDENT, AR = "arith-d2f-lora", "arith-qwen2-ar"
LORA = {"r": 32, "alpha": 32.0, "dropout": 0.1}  # the published D2F adapters' settings


def teacher_name(layout: str) -> str:
    return f"arith-{layout}-teacher"


@dataclass(slots=True)
class Recipe:
    """Everything that decides what the training command produces (the defaults are the recipe
    of the committed checkpoints)."""

    hidden: int = 128
    # "llada": the teacher starts from random weights. "dream": Dream's recipe, the teacher starts
    # from the AR baseline's weights and keeps its next-token readout (logits shifted by one), so
    # the AR model trains first and the diffusion phases only teach it to fill masks.
    teacher_layout: str = "dream"
    layers: int = 4
    teacher_steps: int = 0  # optional first phase: the plain LLaDA objective
    teacher_tied_steps: int = 3000  # numbers masked together (tie_masks)
    teacher_lr: float = 1e-3
    decoding_frac: float = 0.5  # share of teacher samples with decoding-state masks
    polish_steps: int = 0  # then uniform masks only (for decoding_frac near 1, which leaves copying weak)
    # Then the tied objective again at a third of the peak rate: the teacher's remaining errors are
    # carries (a step starting from an earlier result) and skipped steps in long chains, which more
    # training at a low rate fixes faster than a longer first schedule.
    refine_steps: int = 1000
    student_steps: int = 2500
    ar_steps: int = 1000
    batch: int = 32
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.hidden % 32 or self.layers <= 0:
            raise ValueError("hidden must be a multiple of 32 (head_dim 32) and layers positive")
        if self.teacher_layout not in ("llada", "dream"):
            raise ValueError("teacher_layout must be llada or dream")
        if not 0.0 <= self.decoding_frac <= 1.0:
            raise ValueError("decoding_frac must be in [0, 1]")
        if min(self.teacher_steps, self.teacher_tied_steps, self.polish_steps, self.refine_steps,
               self.student_steps, self.ar_steps) < 0:
            raise ValueError("step counts must be >= 0")

    @property
    def size(self) -> dict[str, int]:
        heads = self.hidden // 32
        return {"hidden_size": self.hidden, "num_layers": self.layers, "num_heads": heads,
                "num_kv_heads": heads, "intermediate_size": 4 * self.hidden}


def number_tokens(tok: Tokenizer) -> torch.Tensor:
    """Vocabulary mask of tokens that are numbers (tied together by the masking objectives)."""
    vocab = tok.get_vocab()
    mask = torch.zeros(max(vocab.values()) + 1, dtype=torch.bool)
    for s, i in vocab.items():
        mask[i] = s.lstrip("Ġ").isdigit()
    return mask


def _copy_tokenizer(src: Path, dst: Path) -> None:
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(src / f, dst / f)


def _teacher_config(tok: Tokenizer, r: Recipe) -> ModelConfig:
    ids = {"mask_token_id": tok.token_to_id(MASK_TOKEN), "eos_token_id": tok.token_to_id(EOS_TOKEN),
           "pad_token_id": tok.token_to_id(EOS_TOKEN)}
    if r.teacher_layout == "dream":  # the AR baseline's shape, so its weights load unchanged
        return ModelConfig(layout="dream", vocab_size=512, max_position_embeddings=512, rope_theta=10000.0,
                           qkv_bias=True, **ids, **r.size)
    return ModelConfig(layout="llada", vocab_size=tok.get_vocab_size(), embedding_size=512,
                       max_position_embeddings=512, rope_theta=10000.0, **ids, **r.size)


def train_teacher(out: Path, tok_dir: Path, r: Recipe, init: Path | None = None) -> None:
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    torch.manual_seed(0)
    model = Transformer(_teacher_config(tok, r))
    steps = r.teacher_steps
    if init is not None:  # resume: the phases set to 0 steps were done by an earlier run of this recipe
        model.load_state_dict(load_model(init).state_dict())
        steps = 0
    elif r.teacher_layout == "dream":
        model.load_state_dict(load_model(out / AR).state_dict())
    model.to(r.device)
    tied = number_tokens(tok)
    loss = functools.partial(masked_diffusion_loss, model, decoding_frac=r.decoding_frac)
    # Phase 1: the plain LLaDA objective. Phase 2: numbers masked together (see tie_masks), which
    # is what makes the model add instead of copying results from later steps.
    if steps:
        train(model, ProblemStream(tok, r.batch, seed=0),
              TrainConfig(steps=steps, lr=r.teacher_lr, seed=0, batch_size=r.batch, device=r.device),
              loss, "teacher")
    if r.teacher_tied_steps:
        lr = r.teacher_lr / 2 if steps else r.teacher_lr
        train(model, ProblemStream(tok, r.batch, seed=10),
              TrainConfig(steps=r.teacher_tied_steps, lr=lr, seed=10, batch_size=r.batch, device=r.device),
              functools.partial(loss, tied=tied), "teacher-tied")
    if r.polish_steps:
        # Decoding states rarely mask the answer's first sentence, so names and items copied from
        # the question were undertrained; a short uniform-mask phase brings copying back.
        train(model, ProblemStream(tok, r.batch, seed=20),
              TrainConfig(steps=r.polish_steps, lr=r.teacher_lr / 4, seed=20, batch_size=r.batch, device=r.device),
              functools.partial(masked_diffusion_loss, model, tied=tied), "teacher-polish")
    if r.refine_steps:
        train(model, ProblemStream(tok, r.batch, seed=30),
              TrainConfig(steps=r.refine_steps, lr=r.teacher_lr / 3, seed=30, batch_size=r.batch, device=r.device),
              functools.partial(loss, tied=tied), "teacher-refine")
    save_model(model, out / teacher_name(r.teacher_layout))
    _copy_tokenizer(tok_dir, out / teacher_name(r.teacher_layout))


def train_student(out: Path, r: Recipe) -> None:
    teacher = teacher_name(r.teacher_layout)
    model = load_model(out / teacher)
    tok = Tokenizer.from_file(str(out / teacher / "tokenizer.json"))
    torch.manual_seed(1)
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], **LORA)
    model.to(r.device)
    stream = ProblemStream(tok, r.batch, seed=1)
    train(model, stream, TrainConfig(steps=r.student_steps, lr=5e-4, seed=1, weight_decay=0.05,
                                     batch_size=r.batch, device=r.device),
          functools.partial(d2f_distill_loss, model, tied=number_tokens(tok)), "d2f-student")
    shutil.rmtree(out / STUDENT, ignore_errors=True)  # no stale files from another layout's run
    save_adapter(model, out / STUDENT, base_model=f"../{teacher}", **LORA)
    _copy_tokenizer(out / teacher, out / STUDENT)


def train_ar(out: Path, tok_dir: Path, r: Recipe) -> None:
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    eos = tok.token_to_id(EOS_TOKEN)
    cfg = ModelConfig(layout="qwen2", vocab_size=512, max_position_embeddings=512, rope_theta=10000.0,
                      qkv_bias=True, eos_token_id=eos, pad_token_id=eos, **r.size)
    torch.manual_seed(2)
    model = Transformer(cfg).to(r.device)
    stream = ProblemStream(tok, r.batch, seed=2)
    train(model, stream, TrainConfig(steps=r.ar_steps, lr=1e-3, seed=2, batch_size=r.batch, device=r.device),
          functools.partial(ar_loss, model), "ar")
    save_model(model, out / AR)
    _copy_tokenizer(tok_dir, out / AR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[2] / "checkpoints")
    ap.add_argument("--only", choices=["teacher", "student", "ar"], action="append")
    ap.add_argument("--teacher-init", type=Path,
                    help="resume the teacher from this checkpoint (skips phase 1; set done phases to 0 steps)")
    for f in Recipe.__dataclass_fields__.values():  # every recipe field is a flag, e.g. --teacher-steps
        kind = type(f.default)
        ap.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                        **({"choices": ["llada", "dream"]} if f.name == "teacher_layout" else {}))
    args = ap.parse_args()
    recipe = Recipe(**{k: getattr(args, k) for k in Recipe.__dataclass_fields__})
    torch.set_num_threads(max(1, torch.get_num_threads()))
    todo = args.only or ["teacher", "student", "ar"]
    t0 = time.time()
    tok_dir = args.out / "_tokenizer"
    build_tokenizer(tok_dir)  # deterministic: every run and every model gets the same vocabulary
    if "ar" in todo and recipe.teacher_layout == "dream":  # the teacher starts from the AR weights
        train_ar(args.out, tok_dir, recipe)
    if "teacher" in todo:
        train_teacher(args.out, tok_dir, recipe, args.teacher_init)
    if "student" in todo:
        train_student(args.out, recipe)
    if "ar" in todo and recipe.teacher_layout != "dream":
        train_ar(args.out, tok_dir, recipe)
    shutil.rmtree(tok_dir, ignore_errors=True)
    print(f"trained {', '.join(todo)} in {time.time() - t0:.0f}s ({recipe}, SEQ_LEN={SEQ_LEN})")


if __name__ == "__main__":
    main()
