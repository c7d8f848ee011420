"""`NextStepConfig`: the released checkpoints' `config.json`, validated (brief §2.1).

The real config is a `LlamaConfig` subclass with `model_type: "nextstep"` whose decoder is
Qwen2.5-shaped (GQA, q/k/v bias, no o bias). Two spellings of the image keys exist: the
NextStep-1.1 `config.json` (`genloss_width`, `genloss_depth`, `num_channels`, `patch_size`,
`image_loss_weight`) and the older `NextStepConfig.__init__` arguments (`fm_head_dim`,
`fm_head_layers`, `latent_channels`, `latent_patch_size`, `im_loss_weight`). `from_hf` reads
both; `to_hf` writes the 1.1 spelling.

Reading is strict (`models.config_keys`): `_MATHS` lists the keys that change the maths with the
values implemented here, `_HARMLESS` the keys that do not; any other key, or a maths key at another
value, raises ValueError naming the key and the value. Maths and harmless keys we do not model are
kept in `extra` and written back. Defaults follow the original `NextStepConfig(LlamaConfig)`: an
absent `attention_bias` is Llama's False, an absent `o_attention_bias` follows `attention_bias`.

`prompt_format`: "original" (the NextStep pipelines' CFG rows: an edit without image guidance has
two rows, [image + instruction, negative], brief §2.2) or "tessera" (the embedded tiny checkpoints,
trained for three edit rows whatever the image scale). Absent, it is "original", unless the config
was written by Tessera before the key existed (it then carries `image_area_id`, which only Tessera writes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from models.config import ModelConfig
from models.config_keys import COMMON_HARMLESS, Accept, check_config

# The VAE is Flux's f8 autoencoder (ch_mult [1,2,4,4]); no config key carries this.
VAE_DOWNSAMPLE = 8

# (our field, accepted keys in priority order). The first key is the one `to_hf` writes.
_ALIASES: dict[str, tuple[str, ...]] = {
    "fm_head_dim": ("genloss_width", "fm_head_dim"),
    "fm_head_layers": ("genloss_depth", "fm_head_layers"),
    "fm_head_batch_mul": ("genloss_batch_mul", "fm_head_batch_mul"),
    "latent_channels": ("num_channels", "latent_channels"),
    "patch_size": ("patch_size", "latent_patch_size"),
    "image_loss_weight": ("image_loss_weight", "im_loss_weight"),
}
_SIMPLE = (
    "vocab_size", "hidden_size", "intermediate_size", "rms_norm_eps", "max_position_embeddings",
    "tie_word_embeddings", "boi", "eoi", "image_placeholder_id", "image_area_id", "pad_token_id_added", "bos_token_id",
    "eos_token_id", "pad_token_id", "lm_loss_weight", "latent_size", "base_image_grid_size",
    "attention_bias", "o_attention_bias", "prompt_format",
)
# The released checkpoints announce themselves as LlamaForCausalLM (+ an auto_map, kept in extra);
# written by default and not kept in `extra` when it is that value, so configs compare equal.
_DEFAULT_ARCH = ("architectures", ["LlamaForCausalLM"])
# Fields where an explicit null in config.json means "none" rather than "use the default".
_NULLABLE = ("pad_token_id_added", "bos_token_id", "eos_token_id", "pad_token_id", "latent_size",
             "base_image_grid_size")
# Keys we consume but whose value only needs checking (they are re-derived in `to_hf`).
_CHECKED = ("model_type", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
            "rope_theta", "rope_parameters", "rope_scaling", "mlp_bias", "hidden_act")


def _default_rope(v: Any) -> bool:
    return isinstance(v, dict) and v.get("rope_type", v.get("type", "default")) == "default"


# Keys that change the maths, with the values implemented here (null = absent = the default).
_MATHS: dict[str, Accept] = {
    "hidden_act": Accept(("silu",)),
    "mlp_bias": Accept((False,)),
    "rope_scaling": Accept(test=lambda v: not v or _default_rope(v), means="null (no RoPE scaling)"),
    "rope_parameters": Accept(test=_default_rope, means="rope_type 'default'"),
    "use_sliding_window": Accept((False,)),
    # transformers >= 5 writes one entry per layer
    "layer_types": Accept(test=lambda v: all(t == "full_attention" for t in v), means="all 'full_attention'"),
    "pretraining_tp": Accept((1,)),  # Llama's >1 slices the projections (another rounding)
    "use_gen_pos_embed": Accept((False,)),  # additive 2D sin-cos on the image positions (brief §2.1)
    "use_2d_rope": Accept((False,)),  # the training code's optional 2D RoPE index (brief §2.1)
    "genloss_type": Accept(("transport",), means="'transport' (the flow-matching head)"),
}
# Keys that do not change what we run: dropout (inference), sliding-window sizes (read only with
# use_sliding_window), the VAE's location, the base grid of the unused 2D position embedding.
_HARMLESS = COMMON_HARMLESS | {"attention_dropout", "sliding_window", "max_window_layers", "vae_name_or_path",
                               "image_size"}
PROMPT_FORMATS = ("original", "tessera")
_TESSERA_MARKER = "image_area_id"  # only Tessera's to_hf writes it


@dataclass(slots=True)
class NextStepConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rope_theta: float = 10000.0  # LlamaConfig's default; Qwen2.5-14B checkpoints write 1e6
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 131072
    attention_bias: bool = True  # q/k/v bias (Qwen2)
    o_attention_bias: bool = False
    prompt_format: str = "original"  # see the module docstring
    tie_word_embeddings: bool = False
    # special tokens (NextStep-1.1: boi 151667, eoi 151668, placeholder 151669, pad 151665)
    boi: int = 151667
    eoi: int = 151668
    image_placeholder_id: int = 151669
    # `<|image_area|>`: not in config.json; 151666 is the brief's inference from the add order.
    image_area_id: int = 151666
    pad_token_id_added: int | None = 151665
    bos_token_id: int | None = 151643
    eos_token_id: int | None = 151643
    pad_token_id: int | None = None
    # image tokenizer geometry
    latent_channels: int = 16
    patch_size: int = 2
    latent_size: int | None = None
    base_image_grid_size: int | None = None
    # flow-matching head (SimpleMLPAdaLN)
    fm_head_dim: int = 1536
    fm_head_layers: int = 12
    fm_head_batch_mul: int = 4
    lm_loss_weight: float = 0.01
    image_loss_weight: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size",
                     "max_position_embeddings", "latent_channels", "patch_size", "fm_head_dim", "fm_head_layers",
                     "fm_head_batch_mul"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError(f"bad head geometry: hidden {self.hidden_size}, heads {self.num_heads}, "
                             f"kv heads {self.num_kv_heads}")
        if self.o_attention_bias:
            # models.transformer.Block's o_proj has no bias; the released configs say false.
            raise ValueError("config key 'o_attention_bias' = True is not implemented (implemented: False; "
                             "unset, it follows attention_bias)")
        specials = {"boi": self.boi, "eoi": self.eoi, "image_placeholder_id": self.image_placeholder_id,
                    "image_area_id": self.image_area_id}
        for name, v in specials.items():
            if not 0 <= v < self.vocab_size:
                raise ValueError(f"{name}={v} outside the vocabulary [0, {self.vocab_size})")
        if len(set(specials.values())) != len(specials):
            raise ValueError(f"special image tokens must be distinct: {specials}")
        if self.extra.get("use_gen_pos_embed"):
            raise ValueError("use_gen_pos_embed (additive 2D sin-cos) is not supported")
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {PROMPT_FORMATS}, got {self.prompt_format!r}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def token_dim(self) -> int:
        """Width of one image token: 16 latent channels × a 2×2 patch = 64."""
        return self.latent_channels * self.patch_size ** 2

    @property
    def down_factor(self) -> int:
        """Pixels per image token side: f8 VAE × 2×2 patch = 16 (512² -> 32×32 tokens)."""
        return VAE_DOWNSAMPLE * self.patch_size

    @property
    def pad_id(self) -> int:
        """Left-padding id for CFG rows of different lengths (never attended to)."""
        for v in (self.pad_token_id_added, self.pad_token_id, self.eos_token_id):
            if v is not None:
                return v
        return 0

    def backbone_config(self) -> ModelConfig:
        """The Qwen2 decoder as `models.transformer.Transformer` understands it."""
        return ModelConfig(
            layout="qwen2", vocab_size=self.vocab_size, hidden_size=self.hidden_size, num_layers=self.num_layers,
            num_heads=self.num_heads, num_kv_heads=self.num_kv_heads, intermediate_size=self.intermediate_size,
            rope_theta=self.rope_theta, rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings, qkv_bias=self.attention_bias,
            tie_word_embeddings=self.tie_word_embeddings, eos_token_id=self.eos_token_id,
            pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id,
        )

    # ---- HF config.json round trip -------------------------------------------------------------

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> NextStepConfig:
        if str(d.get("model_type", "")).lower() != "nextstep":
            raise ValueError(f"expected model_type 'nextstep', got {d.get('model_type')!r}")
        known = set(_SIMPLE) | set(_CHECKED) | {k for keys in _ALIASES.values() for k in keys}
        check_config("NextStep config.json", d, known - set(_MATHS), _MATHS, _HARMLESS)
        rope = d.get("rope_parameters") or {}  # transformers >= 5 spelling of rope_theta
        heads = d["num_attention_heads"]
        if d.get("head_dim") not in (None, d["hidden_size"] // heads):
            raise ValueError(f"NextStep config.json: config key 'head_dim' = {d['head_dim']!r} is not implemented "
                             f"(implemented: hidden_size / num_attention_heads = {d['hidden_size'] // heads})")
        kw: dict[str, Any] = {k: d[k] for k in _SIMPLE if k in d and (d[k] is not None or k in _NULLABLE)}
        for ours, keys in _ALIASES.items():
            for k in keys:
                if d.get(k) is not None:
                    kw[ours] = d[k]
                    break
        # The original NextStepConfig(LlamaConfig): attention_bias defaults to Llama's False, and an
        # unset o_attention_bias follows attention_bias.
        kw["attention_bias"] = bool(d.get("attention_bias") or False)
        if d.get("o_attention_bias") is None:
            kw["o_attention_bias"] = kw["attention_bias"]
        kw["prompt_format"] = d.get("prompt_format") or ("tessera" if _TESSERA_MARKER in d else "original")
        return cls(
            num_layers=d["num_hidden_layers"], num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            rope_theta=float(d.get("rope_theta", rope.get("rope_theta", 10000.0))),
            extra={k: v for k, v in d.items() if k not in known and (k, v) != _DEFAULT_ARCH}, **kw,
        )

    def to_hf(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "model_type": "nextstep", "hidden_size": self.hidden_size, "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim, "rope_theta": self.rope_theta, "rope_scaling": None, "mlp_bias": False,
            "hidden_act": "silu",
        }
        d.update({k: getattr(self, k) for k in _SIMPLE})  # nulls too: they round-trip as "none"
        d.update({keys[0]: getattr(self, ours) for ours, keys in _ALIASES.items()})
        return {_DEFAULT_ARCH[0]: _DEFAULT_ARCH[1], **self.extra, **d}
