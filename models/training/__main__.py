"""Train the embedded tiny text models: `python -m models.training` (2 CPU cores, ~55 minutes;
`--device cuda` runs the same recipe on a GPU).

Produces, in HF formats loaded by the same code as real checkpoints:
  <out>/arith-llada-teacher  LLaDA-layout masked-diffusion model (the bidirectional teacher)
  <out>/arith-d2f-lora       D2F student: a PEFT LoRA adapter on the teacher
  <out>/arith-qwen2-ar       autoregressive baseline of the same size (Qwen2 layout)

The recipe (the `Recipe` defaults) came from a side-by-side run of variants on a GPU
(scripts/device_session.sh): what lifted the teacher was training on decoding-state masks (a
clean answer prefix, a partly masked block, everything after it masked: the states a
semi-autoregressive sampler visits) for 80 % of samples, with numbers masked together
(`tie_masks`). At 4800 steps that took vanilla decoding from 0.12 to 0.77 exact answers. A short
uniform-mask phase at the end (`polish_steps`) restores copying from the question, which
decoding states alone leave undertrained.
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

from models.checkpoint import load_model, save_model
from models.config import ModelConfig
from models.lora import apply_lora, save_adapter
from models.training.data import SEQ_LEN, ProblemStream, build_tokenizer
from models.training.loop import TrainConfig, train
from models.training.objectives import ar_loss, d2f_distill_loss, masked_diffusion_loss
from models.transformer import Transformer
from models.worlds.tokenizer import EOS_TOKEN, MASK_TOKEN

TEACHER, STUDENT, AR = "arith-llada-teacher", "arith-d2f-lora", "arith-qwen2-ar"
LORA = {"r": 32, "alpha": 32.0, "dropout": 0.1}  # the published D2F adapters' settings


@dataclass(slots=True)
class Recipe:
    """Everything that decides what the training command produces (the defaults are the recipe
    of the committed checkpoints)."""

    hidden: int = 128
    layers: int = 4
    teacher_steps: int = 0  # optional first phase: the plain LLaDA objective
    teacher_tied_steps: int = 4800  # numbers masked together (tie_masks)
    teacher_lr: float = 1e-3
    decoding_frac: float = 0.8  # share of teacher samples with decoding-state masks
    polish_steps: int = 600  # then uniform masks only: decoding states alone leave copying weak
    student_steps: int = 1500
    ar_steps: int = 1000
    batch: int = 32
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.hidden % 32 or self.layers <= 0:
            raise ValueError("hidden must be a multiple of 32 (head_dim 32) and layers positive")
        if not 0.0 <= self.decoding_frac <= 1.0:
            raise ValueError("decoding_frac must be in [0, 1]")
        if min(self.teacher_steps, self.teacher_tied_steps, self.polish_steps, self.student_steps, self.ar_steps) < 0:
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


def train_teacher(out: Path, tok_dir: Path, r: Recipe, init: Path | None = None) -> None:
    tok = build_tokenizer(tok_dir)
    cfg = ModelConfig(layout="llada", vocab_size=tok.get_vocab_size(), embedding_size=512,
                      max_position_embeddings=512, rope_theta=10000.0,
                      mask_token_id=tok.token_to_id(MASK_TOKEN), eos_token_id=tok.token_to_id(EOS_TOKEN),
                      pad_token_id=tok.token_to_id(EOS_TOKEN), **r.size)
    torch.manual_seed(0)
    model = Transformer(cfg)
    steps = r.teacher_steps
    if init is not None:  # resume: the phases set to 0 steps were done by an earlier run of this recipe
        model.load_state_dict(load_model(init).state_dict())
        steps = 0
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
    save_model(model, out / TEACHER)
    _copy_tokenizer(tok_dir, out / TEACHER)


def train_student(out: Path, r: Recipe) -> None:
    model = load_model(out / TEACHER)
    tok = Tokenizer.from_file(str(out / TEACHER / "tokenizer.json"))
    torch.manual_seed(1)
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], **LORA)
    model.to(r.device)
    stream = ProblemStream(tok, r.batch, seed=1)
    train(model, stream, TrainConfig(steps=r.student_steps, lr=5e-4, seed=1, weight_decay=0.05,
                                     batch_size=r.batch, device=r.device),
          functools.partial(d2f_distill_loss, model, tied=number_tokens(tok)), "d2f-student")
    save_adapter(model, out / STUDENT, base_model=f"../{TEACHER}", **LORA)
    _copy_tokenizer(out / TEACHER, out / STUDENT)


def train_ar(out: Path, r: Recipe) -> None:
    tok = Tokenizer.from_file(str(out / TEACHER / "tokenizer.json"))
    eos = tok.token_to_id(EOS_TOKEN)
    cfg = ModelConfig(layout="qwen2", vocab_size=512, max_position_embeddings=512, rope_theta=10000.0,
                      qkv_bias=True, eos_token_id=eos, pad_token_id=eos, **r.size)
    torch.manual_seed(2)
    model = Transformer(cfg).to(r.device)
    stream = ProblemStream(tok, r.batch, seed=2)
    train(model, stream, TrainConfig(steps=r.ar_steps, lr=1e-3, seed=2, batch_size=r.batch, device=r.device),
          functools.partial(ar_loss, model), "ar")
    save_model(model, out / AR)
    _copy_tokenizer(out / TEACHER, out / AR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "checkpoints")
    ap.add_argument("--only", choices=["teacher", "student", "ar"], action="append")
    ap.add_argument("--teacher-init", type=Path, help="skip phase 1: start phase 2 from this phase-1 checkpoint")
    for f in Recipe.__dataclass_fields__.values():  # every recipe field is a flag, e.g. --teacher-steps
        ap.add_argument("--" + f.name.replace("_", "-"), type=type(f.default), default=f.default)
    args = ap.parse_args()
    recipe = Recipe(**{k: getattr(args, k) for k in Recipe.__dataclass_fields__})
    torch.set_num_threads(max(1, torch.get_num_threads()))
    todo = args.only or ["teacher", "student", "ar"]
    t0 = time.time()
    if "teacher" in todo:
        train_teacher(args.out, args.out / "_tokenizer", recipe, args.teacher_init)
    if "student" in todo:
        train_student(args.out, recipe)
    if "ar" in todo:
        train_ar(args.out, recipe)
    shutil.rmtree(args.out / "_tokenizer", ignore_errors=True)
    print(f"trained {', '.join(todo)} in {time.time() - t0:.0f}s ({recipe}, SEQ_LEN={SEQ_LEN})")


if __name__ == "__main__":
    main()
