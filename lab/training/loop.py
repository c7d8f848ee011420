"""The training loop shared by the teacher, the D2F student, the AR baseline and the image models.

`TESSERA_TRAIN_UNTIL` (a Unix time) ends every phase early, keeping what was learned so far: for
time-boxed runs on a lent GPU, where a killed process would return nothing. The log says so.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from lab.training.data import Batch, ProblemStream


@dataclass(slots=True)
class TrainConfig:
    steps: int
    lr: float
    batch_size: int = 32
    warmup: int = 100
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    clip: float = 1.0
    seed: int = 0
    log_every: int = 50
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.lr <= 0 or self.batch_size <= 0:
            raise ValueError("steps, lr and batch_size must be positive")


def train(model: nn.Module, stream: ProblemStream, cfg: TrainConfig,
          loss_fn: Callable[[Batch, torch.Generator], torch.Tensor], name: str) -> list[float]:
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, eps=1e-8)

    def lr_at(step: int) -> float:
        # Linear warmup, then cosine decay to 10% of the peak.
        if step < cfg.warmup:
            return (step + 1) / cfg.warmup
        frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
        return 0.1 + 0.45 * (1 + math.cos(math.pi * frac))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator().manual_seed(cfg.seed)
    model.train()
    losses: list[float] = []
    t0 = time.time()
    until = float(os.environ.get("TESSERA_TRAIN_UNTIL", "inf"))
    for step in range(cfg.steps):
        if time.time() > until:
            print(f"[{name}] TESSERA_TRAIN_UNTIL reached: stopped after {step}/{cfg.steps} steps", flush=True)
            break
        loss = loss_fn(stream.next().to(cfg.device), gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, cfg.clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % cfg.log_every == 0 or step == 0:
            recent = sum(losses[-cfg.log_every:]) / len(losses[-cfg.log_every:])
            print(f"[{name}] step {step + 1}/{cfg.steps} loss {recent:.4f} "
                  f"lr {sched.get_last_lr()[0]:.2e} {time.time() - t0:.0f}s", flush=True)
    model.eval()
    return losses
