"""One model config for every supported checkpoint layout.

Real checkpoints come in three layouts that share the same math (pre-norm RMSNorm, RoPE, SwiGLU):
- "llada": LLaDA-8B (OLMo-derived names `model.transformer.blocks.N.*`, MHA, no biases);
- "dream": Dream-v0 (Qwen2.5 names `model.layers.N.*`, GQA, q/k/v bias, logits shifted by one);
- "qwen2": a plain causal Qwen2 LM (the autoregressive baseline).
`ModelConfig.from_hf` reads each layout's own config.json keys and refuses any value of a key that
changes the maths which models.transformer does not compute (models.config_keys); `to_hf` writes them
back, so a checkpoint the project trains is indistinguishable in format from the real thing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from models.config_keys import LLADA_FIELDS, QWEN2_FIELDS, check_llada, check_qwen2

Layout = Literal["llada", "dream", "qwen2"]
LAYOUTS: tuple[str, ...] = ("llada", "dream", "qwen2")


@dataclass(slots=True)
class ModelConfig:
    layout: Layout
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-5
    max_position_embeddings: int = 4096
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    embedding_size: int | None = None  # LLaDA pads the embedding table beyond vocab_size
    mask_token_id: int | None = None
    eos_token_id: int | list[int] | None = None  # a list (as transformers allows): any of them ends a generation
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    extra: dict[str, Any] | None = None  # config.json keys not read into fields, written back unchanged

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads",
                     "intermediate_size", "max_position_embeddings"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} not divisible by num_heads {self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not divisible by num_kv_heads {self.num_kv_heads}")
        if self.embedding_size is not None and self.embedding_size < self.vocab_size:
            raise ValueError("embedding_size must be >= vocab_size")
        if self.is_diffusion and self.mask_token_id is None:
            raise ValueError(f"a {self.layout} (diffusion) config needs mask_token_id")
        eos = self.eos_token_id
        ids = eos if isinstance(eos, list) else [] if eos is None else [eos]
        if (eos is not None and not ids) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ValueError(f"eos_token_id must be a token id or a non-empty list of them, got {eos!r}")

    @property
    def stop_ids(self) -> frozenset[int]:
        """The ids that end a generation: eos_token_id, or every id of its list."""
        eos = self.eos_token_id
        return frozenset() if eos is None else frozenset(eos if isinstance(eos, list) else (eos,))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def table_size(self) -> int:
        return self.embedding_size or self.vocab_size

    @property
    def is_diffusion(self) -> bool:
        return self.layout in ("llada", "dream")

    @property
    def shift_logits(self) -> bool:
        # Dream is initialised from an AR model and keeps its next-token readout: the token at
        # position i is predicted by the logits at position i-1.
        return self.layout == "dream"

    # ---- HF config.json round trip -------------------------------------------------------------

    @classmethod
    def from_hf(cls, d: dict[str, Any]) -> ModelConfig:
        """Read a layout's own config.json; ValueError naming the key and the value for any maths
        setting models.transformer does not implement (models.config_keys has the tables)."""
        mt = str(d.get("model_type", "")).lower()
        if mt == "llada":
            kv = check_llada(d)
            # LLaDA's MLP width: mlp_hidden_size, else mlp_ratio * d_model (LLaDA-8B has both, 12288 and 4:
            # mlp_ratio is then unused, not a consistency check).
            mlp = d.get("mlp_hidden_size")
            return cls(
                layout="llada", vocab_size=d["vocab_size"], hidden_size=d["d_model"],
                num_layers=d["n_layers"], num_heads=d["n_heads"], num_kv_heads=kv,
                intermediate_size=mlp if mlp is not None else d.get("mlp_ratio", 4) * d["d_model"],
                rope_theta=d.get("rope_theta", 10000.0), rms_norm_eps=d.get("rms_norm_eps", 1e-5),
                max_position_embeddings=d.get("max_sequence_length", 1024),
                qkv_bias=bool(d.get("include_qkv_bias", False)),
                tie_word_embeddings=bool(d.get("weight_tying", True)),  # LLaDAConfig's default
                embedding_size=d.get("embedding_size"),
                mask_token_id=d.get("mask_token_id", 126336), eos_token_id=d.get("eos_token_id"),
                pad_token_id=d.get("pad_token_id"), bos_token_id=d.get("bos_token_id"),
                extra={k: v for k, v in d.items() if k not in LLADA_FIELDS},
            )
        if mt in ("dream", "qwen2"):
            check_qwen2("Dream" if mt == "dream" else "Qwen2", d)
            rope = d.get("rope_parameters") or {}
            rope_theta = d.get("rope_theta", rope.get("rope_theta", 10000.0))
            return cls(
                layout="dream" if mt == "dream" else "qwen2", vocab_size=d["vocab_size"],
                hidden_size=d["hidden_size"], num_layers=d["num_hidden_layers"],
                num_heads=d["num_attention_heads"],
                num_kv_heads=d.get("num_key_value_heads") or d["num_attention_heads"],
                intermediate_size=d["intermediate_size"], rope_theta=rope_theta,
                rms_norm_eps=d.get("rms_norm_eps", 1e-6),
                max_position_embeddings=d.get("max_position_embeddings", 32768), qkv_bias=True,
                tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
                mask_token_id=d.get("mask_token_id"), eos_token_id=d.get("eos_token_id"),
                pad_token_id=d.get("pad_token_id"), bos_token_id=d.get("bos_token_id"),
                extra={k: v for k, v in d.items() if k not in QWEN2_FIELDS},
            )
        raise ValueError(f"unsupported model_type {mt!r}; expected llada, dream or qwen2")

    def to_hf(self) -> dict[str, Any]:
        ids = {k: v for k, v in (("mask_token_id", self.mask_token_id), ("eos_token_id", self.eos_token_id),
                                  ("pad_token_id", self.pad_token_id), ("bos_token_id", self.bos_token_id))
               if v is not None}
        if self.layout == "llada":
            d: dict[str, Any] = {
                "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": self.hidden_size,
                "n_layers": self.num_layers, "n_heads": self.num_heads, "n_kv_heads": self.num_kv_heads,
                "mlp_hidden_size": self.intermediate_size, "vocab_size": self.vocab_size,
                "embedding_size": self.table_size, "max_sequence_length": self.max_position_embeddings,
                "rope": True, "rope_theta": self.rope_theta, "rms_norm_eps": self.rms_norm_eps,
                "layer_norm_type": "rms", "block_type": "llama", "activation_type": "silu",
                "weight_tying": self.tie_word_embeddings, "include_bias": False,
                "include_qkv_bias": self.qkv_bias, "alibi": False, "use_cache": False,
            }
        else:
            d = {
                "model_type": "Dream" if self.layout == "dream" else "qwen2",
                "architectures": ["DreamModel" if self.layout == "dream" else "Qwen2ForCausalLM"],
                "hidden_size": self.hidden_size, "num_hidden_layers": self.num_layers,
                "num_attention_heads": self.num_heads, "num_key_value_heads": self.num_kv_heads,
                "intermediate_size": self.intermediate_size, "vocab_size": self.vocab_size,
                "rope_theta": self.rope_theta, "rms_norm_eps": self.rms_norm_eps,
                "max_position_embeddings": self.max_position_embeddings, "hidden_act": "silu",
                "tie_word_embeddings": self.tie_word_embeddings, "rope_scaling": None,
            }
        return {**(self.extra or {}), **d, **ids}
