"""Train the embedded tiny text models: `python -m models.training` (CPU, 2 cores, < 1 hour).

Produces, in HF formats loaded by the same code as real checkpoints:
  <out>/arith-llada-teacher  LLaDA-layout masked-diffusion model (the bidirectional teacher)
  <out>/arith-d2f-lora       D2F student: a PEFT LoRA adapter on the teacher
  <out>/arith-qwen2-ar       autoregressive baseline of the same size (Qwen2 layout)
"""

from __future__ import annotations

import argparse
import functools
import shutil
import time
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
SIZE = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 512}
LORA = {"r": 32, "alpha": 32.0, "dropout": 0.1}  # the published D2F adapters' settings


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


def train_teacher(out: Path, tok_dir: Path, steps: int, tied_steps: int, init: Path | None = None) -> None:
    tok = build_tokenizer(tok_dir)
    cfg = ModelConfig(layout="llada", vocab_size=tok.get_vocab_size(), embedding_size=512,
                      max_position_embeddings=512, rope_theta=10000.0,
                      mask_token_id=tok.token_to_id(MASK_TOKEN), eos_token_id=tok.token_to_id(EOS_TOKEN),
                      pad_token_id=tok.token_to_id(EOS_TOKEN), **SIZE)
    torch.manual_seed(0)
    model = Transformer(cfg)
    if init is not None:  # resume: phase 1 was done by an earlier run with this same recipe
        model.load_state_dict(load_model(init).state_dict())
        steps = 0
    stream = ProblemStream(tok, 32, seed=0)
    tied = number_tokens(tok)
    # Phase 1: the plain LLaDA objective. Phase 2: numbers masked together (see tie_masks), which
    # is what makes the model add instead of copying results from later steps.
    if steps:
        train(model, stream, TrainConfig(steps=steps, lr=1e-3, seed=0),
              functools.partial(masked_diffusion_loss, model), "teacher")
    train(model, ProblemStream(tok, 32, seed=10), TrainConfig(steps=tied_steps, lr=5e-4, seed=10),
          functools.partial(masked_diffusion_loss, model, tied=tied), "teacher-tied")
    save_model(model, out / TEACHER)
    _copy_tokenizer(tok_dir, out / TEACHER)


def train_student(out: Path, steps: int) -> None:
    model = load_model(out / TEACHER)
    tok = Tokenizer.from_file(str(out / TEACHER / "tokenizer.json"))
    torch.manual_seed(1)
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], **LORA)
    stream = ProblemStream(tok, 32, seed=1)
    train(model, stream, TrainConfig(steps=steps, lr=5e-4, seed=1, weight_decay=0.05),
          functools.partial(d2f_distill_loss, model, tied=number_tokens(tok)), "d2f-student")
    save_adapter(model, out / STUDENT, base_model=f"../{TEACHER}", **LORA)
    _copy_tokenizer(out / TEACHER, out / STUDENT)


def train_ar(out: Path, steps: int) -> None:
    tok = Tokenizer.from_file(str(out / TEACHER / "tokenizer.json"))
    eos = tok.token_to_id(EOS_TOKEN)
    cfg = ModelConfig(layout="qwen2", vocab_size=512, max_position_embeddings=512, rope_theta=10000.0,
                      qkv_bias=True, eos_token_id=eos, pad_token_id=eos, **SIZE)
    torch.manual_seed(2)
    model = Transformer(cfg)
    stream = ProblemStream(tok, 32, seed=2)
    train(model, stream, TrainConfig(steps=steps, lr=1e-3, seed=2), functools.partial(ar_loss, model), "ar")
    save_model(model, out / AR)
    _copy_tokenizer(out / TEACHER, out / AR)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "checkpoints")
    ap.add_argument("--only", choices=["teacher", "student", "ar"], action="append")
    ap.add_argument("--teacher-steps", type=int, default=3000)
    ap.add_argument("--teacher-tied-steps", type=int, default=1000)
    ap.add_argument("--student-steps", type=int, default=1000)
    ap.add_argument("--ar-steps", type=int, default=1500)
    ap.add_argument("--teacher-init", type=Path, help="skip phase 1: start phase 2 from this phase-1 checkpoint")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    todo = args.only or ["teacher", "student", "ar"]
    t0 = time.time()
    if "teacher" in todo:
        train_teacher(args.out, args.out / "_tokenizer", args.teacher_steps, args.teacher_tied_steps,
                      args.teacher_init)
    if "student" in todo:
        train_student(args.out, args.student_steps)
    if "ar" in todo:
        train_ar(args.out, args.ar_steps)
    shutil.rmtree(args.out / "_tokenizer", ignore_errors=True)
    print(f"trained {', '.join(todo)} in {time.time() - t0:.0f}s (SEQ_LEN={SEQ_LEN})")


if __name__ == "__main__":
    main()
