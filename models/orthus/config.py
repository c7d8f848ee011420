"""Orthus configuration, read from and written to the HF Chameleon-format config.json.

Orthus checkpoints are tagged "chameleon" and use Chameleon's config keys (brief §1.1, §1.4):
vocab/hidden/intermediate sizes, layer/head counts, `rms_norm_eps`, `rope_theta` (older
transformers) or `rope_parameters` (transformers >= 5), `vq_config`, `vocabulary_map`. Orthus adds
the diffusion head width `diffloss_w` (and `diffloss_d`, accepted but unused by the original).

Reading is strict (`models.config_keys`): `_MATHS` lists the keys that change the maths with the
values implemented here, `_HARMLESS` the keys that do not change what we run; any other key, or a
maths key at another value, raises ValueError naming the key and the value.

`prompt_format` says how prompts are laid out: "original" (Orthus's scripts: T2I guidance row
"Generate an image.", brief §1.2) or "tessera" (the embedded tiny checkpoints, trained with an empty
guidance row, lab/training/images/orthus.py). A config.json without the key is "original", unless it
was written by Tessera before the key existed (it then carries `head_num_res_blocks`, which only
Tessera writes: the original hard-codes 3 blocks).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.config_keys import COMMON_HARMLESS, Accept, check_config

# Keys this class reads (their values are validated in __post_init__), and the maths keys `to_hf`
# writes at their one implemented value: neither kind is kept in `extra`.
_KNOWN = {
    "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
    "num_key_value_heads", "rms_norm_eps", "rope_theta", "max_position_embeddings", "tie_word_embeddings",
    "bos_token_id", "eos_token_id", "pad_token_id", "image_token_id", "boi_token_id", "eoi_token_id",
    "sep_token_id", "image_token_offset", "image_seq_length", "diffloss_w", "head_num_res_blocks", "latent_scale",
    "prompt_format",
}
_WRITTEN = {"hidden_act", "swin_norm", "attention_bias", "mlp_bias", "rope_parameters", "rope_scaling"}
# Read but also carried through unchanged (to_hf writes them back from `extra`).
_CARRIED = {"vq_config", "vocabulary_map"}


def _default_rope(v: Any) -> bool:
    return isinstance(v, dict) and v.get("rope_type", v.get("type", "default")) == "default"


# Keys that change the maths, with the values implemented here (null = absent = the default).
_MATHS: dict[str, Accept] = {
    "swin_norm": Accept((False,)),  # True: Chameleon-30B's norm placement (after attention / MLP)
    "attention_bias": Accept((False,)),  # Chameleon-7B has no q/k/v/o biases
    "mlp_bias": Accept((False,)),
    "hidden_act": Accept(("silu",)),
    "rope_scaling": Accept(test=lambda v: not v or _default_rope(v), means="null (no RoPE scaling)"),
    "rope_parameters": Accept(test=_default_rope, means="rope_type 'default'"),
    # Per-head LayerNorm on q and k (brief §1.1): always applied here (transformers' Chameleon has no
    # switch; Meta's params call it qk_normalization).
    "qk_layernorm": Accept((True,)),
    "qk_normalization": Accept((True,)),
    # Chameleon-30B (model_parallel_size 4) splits the per-head q/k norms across shards.
    "model_parallel_size": Accept((1,)),
}
# Keys that do not change what we run: dropout (inference), training-only head settings, and
# `diffloss_d`, which the original accepts and never uses (brief §1.1).
_HARMLESS = COMMON_HARMLESS | {"attention_dropout", "diffloss_d", "diffusion_batch_mul"}
# vq_config describes Chameleon's VQGAN (`model.vqmodel.*`). Here it gives the codebook size and
# feature width (read) and the token grid, checked against image_seq_length; its architecture keys are
# read by models.orthus.vqgan when the checkpoint has no vae/ directory (and validated there).
_VQ_KNOWN = {"embed_dim", "num_embeddings", "n_embed", "resolution", "channel_multiplier"}
_VQ_HARMLESS = COMMON_HARMLESS | {
    "model_type", "base_channels", "num_res_blocks", "attn_resolutions", "attn_type", "latent_channels",
    "in_channels", "out_channels", "double_latent", "dropout", "z_channels",
}
PROMPT_FORMATS = ("original", "tessera")
# Only Tessera's `to_hf` writes this key: a config with it and no prompt_format is a tiny model's.
_TESSERA_MARKER = "head_num_res_blocks"


def _vq_grid(vq: dict[str, Any]) -> int | None:
    """Patches per image from the VQGAN geometry: (resolution / 2^(levels-1))^2, or None if not given."""
    res, mult = vq.get("resolution"), vq.get("channel_multiplier")
    if res is None or not mult:
        return None
    side = int(res) // 2 ** (len(mult) - 1)
    return side * side


@dataclass(slots=True)
class OrthusConfig:
    vocab_size: int = 65536
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32  # Chameleon-7B is plain MHA (brief §1.1); GQA works too
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | None = 2
    pad_token_id: int | None = None
    # Special tokens (brief §1.1 table).
    image_token_id: int = 8711  # <image> placeholder; its embedding is replaced by soft-VQ
    boi_token_id: int = 8197  # <racm3:break>
    eoi_token_id: int = 8196  # <eoss>
    sep_token_id: int = 8710  # appended to every prompt; generation stops on it
    # Soft-VQ: the mix is over embed_tokens rows [image_token_offset, +codebook_size) (hard-coded 4..8195
    # in the original, not Chameleon's img2bpe map: brief §1.1).
    image_token_offset: int = 4
    codebook_size: int = 8192  # vq_config.num_embeddings
    latent_dim: int = 256  # vq_config.embed_dim: the continuous patch feature size
    image_seq_length: int = 1024  # 32x32 patches for a 512x512 image
    # Diffusion head (SimpleMLPAdaLN, brief §1.1).
    head_width: int = 1536  # diffloss_w
    head_num_res_blocks: int = 3
    latent_scale: float = 0.1  # head works on VQ features x 0.1; output is divided by it
    prompt_format: str = "original"  # see the module docstring
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "num_heads", "num_kv_heads",
                     "max_position_embeddings", "codebook_size", "latent_dim", "image_seq_length", "head_width",
                     "head_num_res_blocks"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}")
        if self.rms_norm_eps <= 0 or self.latent_scale <= 0 or self.rope_theta <= 0:
            raise ValueError("rms_norm_eps, rope_theta and latent_scale must be positive")
        if self.image_token_offset < 0 or self.image_token_offset + self.codebook_size > self.vocab_size:
            raise ValueError(f"image rows [{self.image_token_offset}, +{self.codebook_size}) exceed vocab "
                             f"{self.vocab_size}")
        specials = {"image_token_id": self.image_token_id, "boi_token_id": self.boi_token_id,
                    "eoi_token_id": self.eoi_token_id, "sep_token_id": self.sep_token_id}
        for name, tok in specials.items():
            if not 0 <= tok < self.vocab_size:
                raise ValueError(f"{name} {tok} outside vocab {self.vocab_size}")
        if len(set(specials.values())) != len(specials):
            raise ValueError(f"special token ids must be distinct, got {specials}")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")

    @property
    def qkv_bias(self) -> bool:
        return False  # Chameleon has no attention biases (read by the shared Block)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    # ---- HF config.json round trip -------------------------------------------------------------

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> OrthusConfig:
        if str(d.get("model_type", "chameleon")).lower() != "chameleon":
            raise ValueError(f"expected model_type 'chameleon', got {d.get('model_type')!r}")
        check_config("Orthus config.json", d, _KNOWN | _CARRIED, _MATHS, _HARMLESS)
        rope = d.get("rope_parameters") or {}
        vq = d.get("vq_config") or {}
        check_config("Orthus config.json vq_config", vq, _VQ_KNOWN, {}, _VQ_HARMLESS)
        grid = _vq_grid(vq)
        seq = d.get("image_seq_length")
        if seq is not None and grid is not None and seq != grid:
            raise ValueError(f"Orthus config.json: config key 'image_seq_length' = {seq!r} is not implemented: "
                             f"vq_config (resolution {vq['resolution']}, channel_multiplier "
                             f"{vq['channel_multiplier']}) gives {grid} patches")
        fmt = d.get("prompt_format") or ("tessera" if _TESSERA_MARKER in d else "original")
        vmap = d.get("vocabulary_map") or {}
        defaults = cls()

        def tok(key: str, vocab_name: str | None, default: int) -> int:
            # Prefer an explicit top-level id, then Chameleon's vocabulary_map, then the brief's id.
            if d.get(key) is not None:
                return int(d[key])
            if vocab_name is not None and vocab_name in vmap:
                return int(vmap[vocab_name])
            return default

        return cls(
            vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
            num_layers=d["num_hidden_layers"], num_heads=d["num_attention_heads"],
            num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
            rms_norm_eps=d.get("rms_norm_eps", 1e-5),
            rope_theta=d.get("rope_theta", rope.get("rope_theta", 10000.0)),
            max_position_embeddings=d.get("max_position_embeddings", 4096),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            bos_token_id=d.get("bos_token_id"), eos_token_id=d.get("eos_token_id"), pad_token_id=d.get("pad_token_id"),
            image_token_id=tok("image_token_id", "<image>", defaults.image_token_id),
            boi_token_id=tok("boi_token_id", "<racm3:break>", defaults.boi_token_id),
            eoi_token_id=tok("eoi_token_id", "<eoss>", defaults.eoi_token_id),
            sep_token_id=tok("sep_token_id", None, defaults.sep_token_id),
            image_token_offset=d.get("image_token_offset", defaults.image_token_offset),
            # Older Chameleon forks spell the VQ codebook size `n_embed`.
            codebook_size=vq.get("num_embeddings", vq.get("n_embed", defaults.codebook_size)),
            latent_dim=vq.get("embed_dim", defaults.latent_dim),
            image_seq_length=seq if seq is not None else grid or defaults.image_seq_length,
            head_width=d.get("diffloss_w", defaults.head_width),
            head_num_res_blocks=d.get("head_num_res_blocks", defaults.head_num_res_blocks),
            latent_scale=d.get("latent_scale", defaults.latent_scale),
            prompt_format=fmt,
            extra={k: v for k, v in d.items() if k not in _KNOWN | _WRITTEN},
        )

    def to_hf(self) -> dict[str, Any]:
        extra = dict(self.extra)
        vq = dict(extra.pop("vq_config", None) or {"model_type": "chameleon_vqgan"})
        vq["embed_dim"] = self.latent_dim
        vq["n_embed" if "n_embed" in vq else "num_embeddings"] = self.codebook_size
        extra.setdefault("architectures", ["OrthusForConditionalGeneration"])
        d: dict[str, Any] = {
            "model_type": "chameleon", "vocab_size": self.vocab_size, "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "rms_norm_eps": self.rms_norm_eps, "max_position_embeddings": self.max_position_embeddings,
            # Both spellings: transformers >= 5 reads rope_parameters, the 4.x fork Orthus vendors rope_theta.
            "rope_theta": self.rope_theta,
            "rope_parameters": {"rope_type": "default", "rope_theta": self.rope_theta},
            "tie_word_embeddings": self.tie_word_embeddings, "hidden_act": "silu", "swin_norm": False,
            "attention_bias": False, "mlp_bias": False,
            "bos_token_id": self.bos_token_id, "eos_token_id": self.eos_token_id, "pad_token_id": self.pad_token_id,
            "image_token_id": self.image_token_id, "boi_token_id": self.boi_token_id,
            "eoi_token_id": self.eoi_token_id, "sep_token_id": self.sep_token_id,
            "image_token_offset": self.image_token_offset, "image_seq_length": self.image_seq_length,
            "diffloss_w": self.head_width, "head_num_res_blocks": self.head_num_res_blocks,
            "latent_scale": self.latent_scale, "vq_config": vq, "prompt_format": self.prompt_format,
        }
        return {**extra, **d}
