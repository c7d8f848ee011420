"""Load and save models in the Hugging Face formats the real checkpoints use.

A model directory holds `config.json`, weights as `model.safetensors` or sharded
`model-0000x-of-0000n.safetensors` + `model.safetensors.index.json` (or the older `pytorch_model.bin`,
sharded or not, read with `torch.load(weights_only=True)`), and `tokenizer.json`.
PEFT LoRA adapters (`adapter_config.json` + `adapter_model.safetensors` or `adapter_model.bin`), the
format of the published D2F checkpoints, are merged into the base weights at load: W += (alpha / r) * B @ A.
An adapter's base model is found by models.resolve.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from models.config import ModelConfig
from models.resolve import resolve_base
from models.transformer import Transformer

# (checkpoint name, internal name) templates per layout; internal names are Transformer's.
# Placeholders: {i} layer index, {p} weight|bias, {q} one of q/k/v, {m} one of gate/up/down.
_LLADA = [
    ("model.transformer.wte.weight", "embed.weight"),
    ("model.transformer.ln_f.weight", "norm.weight"),
    ("model.transformer.ff_out.weight", "lm_head.weight"),
    ("model.transformer.blocks.{i}.{q}_proj.{p}", "layers.{i}.{q}_proj.{p}"),
    ("model.transformer.blocks.{i}.attn_out.weight", "layers.{i}.o_proj.weight"),
    ("model.transformer.blocks.{i}.attn_norm.weight", "layers.{i}.attn_norm.weight"),
    ("model.transformer.blocks.{i}.ff_norm.weight", "layers.{i}.mlp_norm.weight"),
    ("model.transformer.blocks.{i}.ff_proj.weight", "layers.{i}.gate_proj.weight"),
    ("model.transformer.blocks.{i}.up_proj.weight", "layers.{i}.up_proj.weight"),
    ("model.transformer.blocks.{i}.ff_out.weight", "layers.{i}.down_proj.weight"),
]
_QWEN2 = [
    ("model.embed_tokens.weight", "embed.weight"),
    ("model.norm.weight", "norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("model.layers.{i}.self_attn.{q}_proj.{p}", "layers.{i}.{q}_proj.{p}"),
    ("model.layers.{i}.self_attn.o_proj.weight", "layers.{i}.o_proj.weight"),
    ("model.layers.{i}.input_layernorm.weight", "layers.{i}.attn_norm.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.mlp_norm.weight"),
    ("model.layers.{i}.mlp.{m}_proj.weight", "layers.{i}.{m}_proj.weight"),
]
NAME_MAPS = {"llada": _LLADA, "dream": _QWEN2, "qwen2": _QWEN2}
_SLOTS = {"i": r"\d+", "p": "weight|bias", "q": "[qkv]", "m": "gate|up|down"}

# The attention projections D2F puts its LoRA on, by checkpoint module name (paper §5.1).
LORA_TARGETS = {"llada": ["q_proj", "k_proj", "v_proj", "attn_out"],
                "dream": ["q_proj", "k_proj", "v_proj", "o_proj"]}


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", template)
    rx = "".join(re.escape(x) if n % 2 == 0 else f"(?P<{x}>{_SLOTS[x]})" for n, x in enumerate(parts))
    return re.compile(rx)


def _translate(layout: str, name: str, forward: bool) -> str | None:
    for ckpt, internal in NAME_MAPS[layout]:
        src, dst = (ckpt, internal) if forward else (internal, ckpt)
        m = _compile(src).fullmatch(name)
        if m:
            return dst.format(**m.groupdict())
    return None


def to_internal(layout: str, name: str) -> str | None:
    return _translate(layout, name, forward=True)


def to_checkpoint(layout: str, internal: str) -> str:
    name = _translate(layout, internal, forward=False)
    if name is None:
        raise KeyError(f"no {layout} checkpoint name for {internal}")
    return name


def read_config(model_dir: str | Path) -> ModelConfig:
    return ModelConfig.from_hf(json.loads((Path(model_dir) / "config.json").read_text()))


def _torch_load(path: Path) -> dict[str, torch.Tensor]:
    # weights_only: a .bin is a pickle, and a pickle can run code; this loads tensors and containers only.
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                            for k, v in obj.items()):
        raise ValueError(f"{path}: not a state dict of named tensors")
    return obj


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path)) if path.name.endswith(".safetensors") else _torch_load(path)


def read_tensors(d: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of the first of `names` present in `d`, each either one file or HF-style shards
    listed by `<name>.index.json` (`weight_map`: tensor -> shard file)."""
    for name in names:
        index = d / f"{name}.index.json"
        if index.exists():
            files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        elif (d / name).exists():
            files = [name]
        else:
            continue
        out: dict[str, torch.Tensor] = {}
        for f in files:
            out.update(_load_tensors(d / f))
        return out
    raise FileNotFoundError(f"{d}: none of " + ", ".join(f"{n} / {n}.index.json" for n in names))


# Safetensors first, like transformers and PEFT; .bin (torch.save pickles) is read with weights_only=True.
MODEL_FILES = ("model.safetensors", "pytorch_model.bin")
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_model.bin")


def read_weights(model_dir: str | Path) -> dict[str, torch.Tensor]:
    return read_tensors(Path(model_dir), MODEL_FILES)


def merge_lora(state: dict[str, torch.Tensor], layout: str, adapter_dir: str | Path) -> int:
    """Merge a PEFT LoRA adapter into an internal-named state dict; returns modules merged."""
    d = Path(adapter_dir)
    acfg = json.loads((d / "adapter_config.json").read_text())
    if acfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{d}: only LORA adapters are supported, got {acfg.get('peft_type')}")
    if acfg.get("use_dora") or acfg.get("use_rslora"):
        raise ValueError(f"{d}: DoRA / rsLoRA adapters are not supported")
    r, alpha = int(acfg["r"]), float(acfg["lora_alpha"])
    pattern = acfg.get("alpha_pattern") or {}
    rank_pattern = acfg.get("rank_pattern") or {}
    if pattern or rank_pattern:
        raise ValueError(f"{d}: per-module alpha/rank patterns are not supported")
    # Options that would need more than W += (alpha / r) * B @ A on the attention weights.
    unsupported = {k: acfg[k] for k in ("fan_in_fan_out", "modules_to_save") if acfg.get(k)}
    if acfg.get("bias", "none") != "none":
        unsupported["bias"] = acfg["bias"]
    if unsupported:
        raise ValueError(f"{d}: adapter_config.json " + ", ".join(f"{k}={v!r}" for k, v in unsupported.items())
                         + " not supported (LoRA on the attention weights only: bias none, no modules_to_save)")
    tensors = read_tensors(d, ADAPTER_FILES)
    merged = 0
    for key, a in tensors.items():
        if ".lora_A." not in key:
            continue
        b = tensors[key.replace(".lora_A.", ".lora_B.")]
        module = key.split(".lora_A.")[0]
        for prefix in ("base_model.model.", ""):
            if module.startswith(prefix):
                internal = to_internal(layout, module[len(prefix):] + ".weight")
                if internal is not None:
                    break
        if internal is None or internal not in state:
            raise KeyError(f"{d}: adapter module {module} matches no base weight")
        w = state[internal]
        state[internal] = (w.float() + (alpha / r) * (b.float() @ a.float())).to(w.dtype)
        merged += 1
    if merged == 0:
        raise ValueError(f"{d}: adapter holds no lora_A/lora_B pairs")
    return merged


def load_model(model_dir: str | Path, adapter_dir: str | Path | None = None,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
               base_dir: str | Path | None = None) -> Transformer:
    """Build a Transformer from an HF-format directory and merge `adapter_dir` into it. `model_dir` may
    itself be an adapter (adapter_config.json): its base is `base_dir` when given, else found from
    `base_model_name_or_path` (models.resolve.resolve_base)."""
    model_dir = Path(model_dir)
    if adapter_dir is None and (model_dir / "adapter_config.json").exists():
        return load_model(resolve_base(model_dir, base_dir), model_dir, dtype, device)
    if base_dir is not None:
        raise ValueError(f"base_dir={base_dir} given, but {model_dir} is not an adapter to load onto a base")
    cfg = read_config(model_dir)
    raw = read_weights(model_dir)
    state: dict[str, torch.Tensor] = {}
    for name, t in raw.items():
        internal = to_internal(cfg.layout, name)
        if internal is None:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            raise KeyError(f"{model_dir}: unexpected tensor {name} for layout {cfg.layout}")
        state[internal] = t
    if adapter_dir is not None:
        merge_lora(state, cfg.layout, adapter_dir)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    model = Transformer(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [m for m in missing if not (cfg.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise KeyError(f"{model_dir}: missing {missing}, unexpected {unexpected}")
    return model.to(device=device, dtype=dtype).eval()


def save_model(model: Transformer, out_dir: str | Path, max_shard_bytes: int | None = None) -> None:
    """Write config.json and safetensors (sharded with an index when over max_shard_bytes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    (out / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2) + "\n")
    tensors = {to_checkpoint(cfg.layout, k): v.detach().contiguous().cpu()
               for k, v in model.state_dict().items()
               if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    write_safetensors(tensors, out, max_shard_bytes)


def write_safetensors(tensors: dict[str, torch.Tensor], out: Path, max_shard_bytes: int | None = None) -> None:
    """One `model.safetensors`, or HF-style shards plus `model.safetensors.index.json`."""
    if max_shard_bytes is None:
        save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
        return
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for k, v in tensors.items():
        nbytes = v.numel() * v.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][k] = v
        size += nbytes
    weight_map = {}
    for i, shard in enumerate(shards):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, fname))
    total = sum(v.numel() * v.element_size() for v in tensors.values())
    (out / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2) + "\n")
