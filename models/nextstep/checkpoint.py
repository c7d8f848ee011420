"""Load and save NextStep in its Hugging Face directory format (brief §2.1, §2.4).

A directory holds `config.json` (`model_type: "nextstep"`) and safetensors, single-file or sharded
with `model.safetensors.index.json`. Tensor names:
- backbone: Qwen2 / Llama names (`model.embed_tokens.weight`, `model.layers.N.self_attn.q_proj.bias`,
  `model.norm.weight`, `lm_head.weight`), mapped by `models.checkpoint`'s qwen2 table;
- `image_in_projector.{weight,bias}`, `image_out_projector.{weight,bias}` (brief §2.1);
- `image_head.net.*` for the FM head, with the SimpleMLPAdaLN sub-names of `head.py`. The brief
  names the head's design, not its checkpoint prefix: `image_head.net.` is the one unverified guess
  here and lives in `HEAD_PREFIX` alone.
The VAE is a separate directory (`ImageTokenizer.from_pretrained`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from models.checkpoint import read_weights, to_checkpoint, to_internal, write_safetensors
from models.nextstep.config import NextStepConfig
from models.nextstep.model import NextStep

HEAD_PREFIX = "image_head."
EXTRA_PREFIXES = ("image_in_projector.", "image_out_projector.", HEAD_PREFIX)
_BACKBONE = "backbone."


def read_config(model_dir: str | Path) -> NextStepConfig:
    return NextStepConfig.from_hf(json.loads((Path(model_dir) / "config.json").read_text()))


def checkpoint_to_internal(name: str) -> str | None:
    """Checkpoint tensor name -> `NextStep.state_dict()` name (None: not ours)."""
    if name.startswith(EXTRA_PREFIXES):
        return name  # NextStep holds these modules under their checkpoint names
    internal = to_internal("qwen2", name)
    return None if internal is None else _BACKBONE + internal


def internal_to_checkpoint(name: str) -> str:
    if name.startswith(EXTRA_PREFIXES):
        return name
    if not name.startswith(_BACKBONE):
        raise KeyError(f"no checkpoint name for {name}")
    return to_checkpoint("qwen2", name[len(_BACKBONE):])


def load_nextstep(model_dir: str | Path, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> NextStep:
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    state: dict[str, torch.Tensor] = {}
    for name, t in read_weights(model_dir).items():
        internal = checkpoint_to_internal(name)
        if internal is None:
            if name.endswith("rotary_emb.inv_freq"):  # old transformers saved this buffer
                continue
            raise KeyError(f"{model_dir}: unexpected tensor {name}")
        state[internal] = t
    tied = _BACKBONE + "lm_head.weight"
    if cfg.tie_word_embeddings:
        state.pop(tied, None)
    with torch.device("meta"):  # skip the random init of ~15 B parameters; load_state_dict assigns
        model = NextStep(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == tied)]
    if missing or unexpected:
        raise KeyError(f"{model_dir}: missing {missing}, unexpected {unexpected}")
    if cfg.tie_word_embeddings:
        model.backbone.lm_head.weight = model.backbone.embed.weight
    # The rotary tables are non-persistent buffers: rebuild them on a real device.
    rot = type(model.backbone.rotary)(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings)
    model.backbone.rotary = rot
    return model.to(device=device, dtype=dtype).eval()


def save_nextstep(model: NextStep, out_dir: str | Path, max_shard_bytes: int | None = None) -> None:
    """Write config.json and safetensors (sharded with an index when over max_shard_bytes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    (out / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2) + "\n")
    tensors = {internal_to_checkpoint(k): v.detach().contiguous().cpu() for k, v in model.state_dict().items()
               if not (cfg.tie_word_embeddings and k == _BACKBONE + "lm_head.weight")}
    write_safetensors(tensors, out, max_shard_bytes)
