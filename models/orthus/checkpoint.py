"""Load and save Orthus in its HF format: config.json + safetensors (single file or sharded with an index).

Tensor names:
- backbone and LM head: transformers' Chameleon names (`model.embed_tokens`, `model.layers.N.self_attn.
  {q,k,v,o}_proj`, `...self_attn.{q,k}_norm.{weight,bias}` of shape [heads, head_dim], `...mlp.*_proj`,
  `...input_layernorm`, `...post_attention_layernorm`, `model.norm`, `lm_head`), as `save_pretrained` writes;
- `model.codebook_in.weight`: the soft-VQ table, an attribute of the Orthus model class (brief §1.1);
- the diffusion head: `<prefix>{input_proj,time_embed.mlp.N,cond_embed,res_blocks.N.*,final_layer.*}`. The
  brief does not give the attribute name the head sits under, so the prefix is found from the file (the
  one in front of `cond_embed.weight`) and reused on save; fresh models use DEFAULT_HEAD_PREFIX;
- `model.vqmodel.*` (Chameleon's VQGAN) is carried through unchanged (`Orthus.passthrough`); the image backend
  builds its encoder and decoder from it when the checkpoint has no vae/ (models.orthus.vqgan).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import torch

from models.checkpoint import read_weights, write_safetensors
from models.orthus.config import OrthusConfig
from models.orthus.head import DiffusionHead
from models.orthus.model import Orthus

log = logging.getLogger(__name__)

DEFAULT_HEAD_PREFIX = "diffloss."  # a guess (see the module docstring); loading does not depend on it
PASSTHROUGH_PREFIX = "model.vqmodel."
VQ_CODEBOOK = "model.vqmodel.quantize.embedding.weight"

# (checkpoint name, internal name) templates. {i} layer, {q} projection, {n} normed proj, {p} param, {m} MLP.
_NAMES = [
    ("model.embed_tokens.weight", "backbone.embed.weight"),
    ("model.norm.weight", "backbone.norm.weight"),
    ("lm_head.weight", "lm_head.weight"),
    ("model.codebook_in.weight", "vision.codebook.weight"),
    ("model.layers.{i}.self_attn.{q}_proj.weight", "backbone.layers.{i}.{q}_proj.weight"),
    ("model.layers.{i}.self_attn.{n}_norm.{p}", "backbone.layers.{i}.{n}_norm.{p}"),
    ("model.layers.{i}.input_layernorm.weight", "backbone.layers.{i}.attn_norm.weight"),
    ("model.layers.{i}.post_attention_layernorm.weight", "backbone.layers.{i}.mlp_norm.weight"),
    ("model.layers.{i}.mlp.{m}_proj.weight", "backbone.layers.{i}.{m}_proj.weight"),
]
_SLOTS = {"i": r"\d+", "q": "[qkvo]", "n": "[qk]", "p": "weight|bias", "m": "gate|up|down"}


def _compile(template: str) -> re.Pattern[str]:
    parts = re.split(r"\{(\w)\}", template)
    return re.compile("".join(re.escape(x) if n % 2 == 0 else f"(?P<{x}>{_SLOTS[x]})" for n, x in enumerate(parts)))


_FORWARD = [(_compile(c), i) for c, i in _NAMES]
_BACKWARD = [(_compile(i), c) for c, i in _NAMES]


def _map(name: str, table: list[tuple[re.Pattern[str], str]]) -> str | None:
    for rx, dst in table:
        m = rx.fullmatch(name)
        if m:
            return dst.format(**m.groupdict())
    return None


def to_internal(name: str, head_prefix: str) -> str | None:
    internal = _map(name, _FORWARD)  # backbone names first: the head prefix may be short
    if internal is None and name.startswith(head_prefix):
        internal = "head." + name[len(head_prefix):]
    return internal


def to_checkpoint(internal: str, head_prefix: str) -> str:
    if internal.startswith("head."):
        return head_prefix + internal[len("head."):]
    name = _map(internal, _BACKWARD)
    if name is None:
        raise KeyError(f"no checkpoint name for {internal}")
    return name


def find_head_prefix(names: list[str]) -> str | None:
    """The prefix in front of the diffusion head's `cond_embed.weight`, or None if the file has no head."""
    hits = {n[: -len("cond_embed.weight")] for n in names
            if n.endswith("cond_embed.weight") and _map(n, _FORWARD) is None}
    if len(hits) > 1:
        raise KeyError(f"several diffusion-head candidates: {sorted(hits)}")
    return hits.pop() if hits else None


def read_config(model_dir: str | Path) -> OrthusConfig:
    return OrthusConfig.from_hf(json.loads((Path(model_dir) / "config.json").read_text()))


def _fit_qk_norm(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    # Chameleon stores per-head norms as [heads, head_dim]; accept a flat [heads*head_dim] too.
    return t.view(shape) if t.shape != shape and t.numel() == shape.numel() else t


def load_orthus(model_dir: str | Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                init_missing: bool = False, seed: int = 0) -> Orthus:
    """Build Orthus from an HF-format directory.

    init_missing: allow a plain Chameleon checkpoint (no Orthus additions): `codebook_in` is then
    initialised from the VQGAN codebook (the original initialises it "as pre-trained codebook") and
    the diffusion head randomly (seeded). Without it, any missing tensor is an error.
    """
    model_dir = Path(model_dir)
    cfg = read_config(model_dir)
    raw = read_weights(model_dir)
    found_prefix = find_head_prefix(list(raw))
    head_prefix = found_prefix or DEFAULT_HEAD_PREFIX
    # Build on the meta device: a 7B model would otherwise be randomly initialised in float32 first.
    with torch.device("meta"):
        model = Orthus(cfg)
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    for name, t in raw.items():
        if name.startswith(PASSTHROUGH_PREFIX):
            model.passthrough[name] = t
            continue
        internal = to_internal(name, head_prefix)
        if internal is None:
            if name.endswith("rotary_emb.inv_freq"):
                continue
            raise KeyError(f"{model_dir}: unexpected tensor {name}")
        if internal not in expected:
            raise KeyError(f"{model_dir}: tensor {name} maps to unknown parameter {internal}")
        state[internal] = _fit_qk_norm(t, expected[internal].shape).to(dtype)
    if cfg.tie_word_embeddings:
        state.pop("lm_head.weight", None)
        state["lm_head.weight"] = state.get("backbone.embed.weight", torch.empty(0))
    missing = sorted(set(expected) - set(state))
    if missing and init_missing:
        _init_missing(model, state, missing, dtype, seed)
        heads = sum(m.startswith("head.") for m in missing)
        log.warning("%s: initialised what the checkpoint lacks: %d diffusion-head tensors%s", model_dir, heads,
                    " and codebook_in" if "vision.codebook.weight" in missing else "")
    elif missing:
        raise KeyError(f"{model_dir}: missing tensors {missing}")
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_word_embeddings:  # assign=True replaced the shared Parameter: tie again
        model.lm_head.weight = model.backbone.embed.weight
    model.backbone.rebuild_rotary()
    model.head_prefix = head_prefix
    return model.to(device=device).eval()


def _init_missing(model: Orthus, state: dict[str, torch.Tensor], missing: list[str], dtype: torch.dtype,
                  seed: int) -> None:
    bad = [m for m in missing if not (m == "vision.codebook.weight" or m.startswith("head."))]
    if bad:
        raise KeyError(f"missing backbone tensors cannot be initialised: {bad}")
    gen = torch.Generator().manual_seed(seed)
    if "vision.codebook.weight" in missing:
        vq = model.passthrough.get(VQ_CODEBOOK)
        shape = (model.config.codebook_size, model.config.latent_dim)
        if vq is not None and tuple(vq.shape) == shape:
            state["vision.codebook.weight"] = vq.to(dtype).clone()
        else:
            state["vision.codebook.weight"] = torch.randn(shape, generator=gen).to(dtype)
    if any(m.startswith("head.") for m in missing):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = DiffusionHead(model.config).state_dict()
        for k, v in fresh.items():
            state.setdefault("head." + k, v.to(dtype))


def save_orthus(model: Orthus, out_dir: str | Path, max_shard_bytes: int | None = None) -> None:
    """Write config.json and safetensors (sharded with model.safetensors.index.json when over max_shard_bytes)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    (out / "config.json").write_text(json.dumps(cfg.to_hf(), indent=2) + "\n")
    prefix = model.head_prefix or DEFAULT_HEAD_PREFIX
    tensors = {to_checkpoint(k, prefix): v.detach().contiguous().cpu() for k, v in model.state_dict().items()
               if not (cfg.tie_word_embeddings and k == "lm_head.weight")}
    tensors.update({k: v.contiguous().cpu() for k, v in model.passthrough.items()})
    write_safetensors(tensors, out, max_shard_bytes)
