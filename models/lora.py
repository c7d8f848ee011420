"""LoRA for training the D2F student, saved in PEFT's adapter format.

Only what D2F needs: LoRA on linear layers, an "adapter off" switch (the teacher is the same
network with the adapter disabled, as in the D2F training code), and `save_adapter` writing
`adapter_config.json` + `adapter_model.safetensors` with PEFT's key names, so the result loads
with `PeftModel.from_pretrained` as well as with `models.checkpoint.load_model`.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from models.checkpoint import to_checkpoint
from models.transformer import Transformer


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.lora_A = nn.Parameter(torch.empty(r, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # PEFT's default init
        self.scale = alpha / r
        self.dropout = nn.Dropout(dropout)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.enabled:
            y = y + (self.dropout(x) @ self.lora_A.t() @ self.lora_B.t()) * self.scale
        return y


def apply_lora(model: Transformer, targets: list[str], r: int, alpha: float, dropout: float) -> list[str]:
    """Freeze the model and wrap every Linear whose attribute name is in `targets`."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for i, layer in enumerate(model.layers):
        for name in targets:
            setattr(layer, name, LoRALinear(getattr(layer, name), r, alpha, dropout))
            wrapped.append(f"layers.{i}.{name}")
    return wrapped


def lora_modules(model: nn.Module) -> Iterator[tuple[str, LoRALinear]]:
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            yield name, m


@contextlib.contextmanager
def adapter_disabled(model: nn.Module) -> Iterator[None]:
    mods = [m for _, m in lora_modules(model)]
    for m in mods:
        m.enabled = False
    try:
        yield
    finally:
        for m in mods:
            m.enabled = True


def save_adapter(model: Transformer, out_dir: str | Path, base_model: str, r: int, alpha: float,
                 dropout: float) -> None:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    layout = model.config.layout
    tensors: dict[str, torch.Tensor] = {}
    targets: set[str] = set()
    for name, m in lora_modules(model):
        ckpt = to_checkpoint(layout, name + ".weight")[: -len(".weight")]
        targets.add(ckpt.rsplit(".", 1)[-1])
        tensors[f"base_model.model.{ckpt}.lora_A.weight"] = m.lora_A.detach().contiguous().cpu()
        tensors[f"base_model.model.{ckpt}.lora_B.weight"] = m.lora_B.detach().contiguous().cpu()
    save_file(tensors, str(out / "adapter_model.safetensors"), metadata={"format": "pt"})
    cfg = {
        "peft_type": "LORA", "task_type": None, "base_model_name_or_path": base_model,
        "r": r, "lora_alpha": alpha, "lora_dropout": dropout, "bias": "none",
        "target_modules": sorted(targets), "fan_in_fan_out": False, "inference_mode": True,
        "init_lora_weights": True, "use_rslora": False, "use_dora": False,
        "modules_to_save": None, "layers_to_transform": None, "rank_pattern": {}, "alpha_pattern": {},
    }
    (out / "adapter_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
