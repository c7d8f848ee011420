"""Train the tiny shapes image models: `python -m lab.training.images [--out DIR] [--only ...]`.

Produces, in the HF formats the model packages load (each directory self-contained):
  <out>/shapes-vae       diffusers AutoencoderKL + NextStep token keys (ImageTokenizer), tokenizer.json
  <out>/shapes-orthus    Chameleon-format Orthus (save_orthus), tokenizer.json, vae/ (its patch features)
  <out>/shapes-nextstep  NextStep (save_nextstep), tokenizer.json, vae/
`--only orthus` / `--only nextstep` reuse <out>/shapes-vae (and its tokenizer) from an earlier run.
After the VAE, Orthus and NextStep train side by side in two processes of one torch thread each
(`--parallel`, the default): two tiny models use two cores better than one model uses both.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tokenizers import Tokenizer

from lab.training.images.data import save_tokenizer, train_tokenizer
from lab.training.images.nextstep import NextStepRecipe, train_nextstep
from lab.training.images.orthus import OrthusRecipe, train_orthus
from lab.training.images.vae import VAERecipe, reconstruction_error, train_vae
from models.nextstep.checkpoint import save_nextstep
from models.nextstep.vae import ImageTokenizer
from models.orthus.checkpoint import save_orthus

VAE, ORTHUS, NEXTSTEP = "shapes-vae", "shapes-orthus", "shapes-nextstep"
DEFAULT_OUT = Path(__file__).resolve().parents[2] / "checkpoints"


def _bundle(out: Path, name: str) -> Path:
    """Copy the tokenizer and the VAE next to a model so its directory loads on its own."""
    dst = out / name
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(out / VAE / f, dst / f)
    shutil.rmtree(dst / "vae", ignore_errors=True)
    (dst / "vae").mkdir(parents=True)
    for f in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(out / VAE / f, dst / "vae" / f)
    return dst


def _default(recipe: type, name: str) -> Any:
    # Slotted dataclasses keep field defaults only in __dataclass_fields__, not as class attributes.
    return recipe.__dataclass_fields__[name].default


def _dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--only", choices=["vae", "orthus", "nextstep"], action="append")
    ap.add_argument("--steps", type=int, help="training steps for every model (smoke runs); overrides the per-model")
    ap.add_argument("--vae-steps", type=int, default=_default(VAERecipe, "steps"))
    ap.add_argument("--orthus-steps", type=int, default=_default(OrthusRecipe, "steps"))
    ap.add_argument("--orthus-late-steps", type=int, default=_default(OrthusRecipe, "late_steps"),
                    help="Orthus's late phase after its main steps (0: none)")
    ap.add_argument("--orthus-wide-steps", type=int, default=_default(OrthusRecipe, "wide_steps"),
                    help="Orthus's wide phase after the late one, on a fresh 5x pool (0: none)")
    ap.add_argument("--orthus-edit-steps", type=int, default=_default(OrthusRecipe, "edit_steps"),
                    help="Orthus's edit phase after the wide one (0: none)")
    ap.add_argument("--nextstep-steps", type=int, default=_default(NextStepRecipe, "steps"))
    ap.add_argument("--nextstep-edit-steps", type=int, default=_default(NextStepRecipe, "edit_steps"),
                    help="NextStep's edit phase after its main steps (0: none)")
    ap.add_argument("--nextstep-rel-steps", type=int, default=_default(NextStepRecipe, "rel_steps"),
                    help="NextStep's relative-prompt phase after the edit phase (0: none)")
    ap.add_argument("--pool", type=int, help="example pool size for every model (default: the recipes')")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--parallel", action=argparse.BooleanOptionalAction, default=True,
                    help="train Orthus and NextStep at once, in two single-threaded processes (default on)")
    return ap


def _train_side_by_side(args: argparse.Namespace) -> dict[str, float]:
    """Orthus and NextStep in two child processes of this command, one thread each; their wall times."""
    common = ["--out", str(args.out), "--device", args.device, "--threads", "1", "--log-every", str(args.log_every),
              "--orthus-steps", str(args.orthus_steps), "--orthus-late-steps", str(args.orthus_late_steps),
              "--orthus-wide-steps", str(args.orthus_wide_steps), "--orthus-edit-steps", str(args.orthus_edit_steps),
              "--nextstep-steps", str(args.nextstep_steps),
              "--nextstep-edit-steps", str(args.nextstep_edit_steps),
              "--nextstep-rel-steps", str(args.nextstep_rel_steps), "--no-parallel"]
    if args.steps is not None:
        common += ["--steps", str(args.steps)]
    if args.pool:
        common += ["--pool", str(args.pool)]
    t0 = time.time()
    procs = {name: subprocess.Popen([sys.executable, "-m", "lab.training.images", "--only", name, *common])
             for name in ("orthus", "nextstep")}
    timings = {}
    for name, proc in procs.items():
        if proc.wait() != 0:
            for other in procs.values():
                other.kill()
            raise SystemExit(f"training {name} failed (exit {proc.returncode})")
        timings[name] = time.time() - t0
    return timings


def main() -> None:
    args = build_parser().parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    todo = args.only or ["vae", "orthus", "nextstep"]
    pool = {"pool": args.pool} if args.pool else {}

    def steps(own: int) -> int:
        return args.steps if args.steps is not None else own

    out: Path = args.out
    timings: dict[str, float] = {}
    t_all = time.time()
    if "vae" in todo:
        t0 = time.time()
        tok = train_tokenizer()
        save_tokenizer(tok, out / VAE)
        r = VAERecipe(steps=steps(args.vae_steps), **({"pool": max(args.pool, 32)} if args.pool else {}))
        vae, losses = train_vae(r, args.device, args.log_every)
        vae.cpu().save_pretrained(out / VAE)
        timings["vae"] = time.time() - t0
        print(f"[vae] final loss {losses[-1]:.4f}, held-out reconstruction error "
              f"{reconstruction_error(vae):.1f}/255", flush=True)
    if not (out / VAE / "config.json").exists():
        raise SystemExit(f"{out / VAE} has no trained VAE: run with --only vae first")
    tok = Tokenizer.from_file(str(out / VAE / "tokenizer.json"))
    vae = ImageTokenizer.from_pretrained(out / VAE).to(args.device)
    if args.parallel and {"orthus", "nextstep"} <= set(todo):
        timings |= _train_side_by_side(args)
    elif "orthus" in todo:
        t0 = time.time()
        r_o = OrthusRecipe(steps=steps(args.orthus_steps), late_steps=steps(args.orthus_late_steps),
                           wide_steps=steps(args.orthus_wide_steps), edit_steps=steps(args.orthus_edit_steps),
                           **({"pool": args.pool, "wide_pool": args.pool} if args.pool else {}))
        model, _ = train_orthus(tok, vae, r_o, args.device, args.log_every)
        save_orthus(model.cpu(), out / ORTHUS)
        _bundle(out, ORTHUS)
        timings["orthus"] = time.time() - t0
    if "nextstep" in todo and "nextstep" not in timings:
        t0 = time.time()
        r_ns = NextStepRecipe(steps=steps(args.nextstep_steps), edit_steps=steps(args.nextstep_edit_steps),
                              rel_steps=steps(args.nextstep_rel_steps), **pool)
        ns, _ = train_nextstep(tok, vae, r_ns, args.device, args.log_every)
        save_nextstep(ns.cpu(), out / NEXTSTEP)
        _bundle(out, NEXTSTEP)
        timings["nextstep"] = time.time() - t0
    for name, dirname in (("vae", VAE), ("orthus", ORTHUS), ("nextstep", NEXTSTEP)):
        if name in timings:
            print(f"{name}: {timings[name]:.0f}s, {dirname} {_dir_mb(out / dirname):.1f} MB")
    print(f"trained {', '.join(todo)} in {time.time() - t_all:.0f}s into {out}")


if __name__ == "__main__":
    main()
