"""The text app's args: which model and how it decodes (placement and scaling are the Serve config's
`deployments:`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field

from models.decoders import METHODS, D2FConfig
from models.engine import AdaptivePolicy, EngineConfig
from models.prompting import PROMPT_MODES
from services.workers.config import STRICT, AppArgs, ModelSection, check_max_tokens, repo_path

D2F_KNOBS = ("tau_add", "tau_act", "tau_conf")


@dataclass(slots=True)
class DecoderDefaults:
    """Decoding knobs used when a request leaves them 0 / unset (D2F's names)."""

    __pydantic_config__ = STRICT

    block_size: int = 32
    tau_add: float = 0.1
    tau_act: float = 0.95
    tau_conf: float = 0.9
    whole_blocks: bool = False  # D2F: max_tokens // block_size whole blocks, as the reference (no short last block)

    def __post_init__(self) -> None:
        D2FConfig(**asdict(self))  # the decoder's own validation, raised at config load

    def options_for(self, method: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """`make_decoder` options for `method`: these defaults with a request's overrides.

        Raises ValueError for a knob the method does not have (e.g. tau_add with fast-dllm).
        """
        knobs = {**asdict(self), **(overrides or {})}
        given = set(overrides or {})
        if method == "d2f":
            return knobs
        allowed = {"fast-dllm": {"block_size", "tau_conf"}, "vanilla": {"block_size"}, "ar": set()}[method]
        if given - allowed:
            raise ValueError(f"the {method} decoder has no {', '.join(sorted(given - allowed))}")
        if method == "fast-dllm":  # its single confidence threshold plays tau_conf's role
            return {"block_size": knobs["block_size"], "threshold": knobs["tau_conf"]}
        if method == "vanilla":
            return {"block_size": knobs["block_size"]}
        return {}


@dataclass(slots=True)
class BatchingDefaults:
    """The replica's continuous batching (models.engine.EngineConfig; the batch width is Serve's
    max_ongoing_requests)."""

    __pydantic_config__ = STRICT

    max_batched_tokens: int = 8192  # window tokens in one forward
    kv_cache_tokens: int = 0  # KV pool size; 0 = room for every sequence at full length (no preemption)
    adaptive: bool = False  # load-adaptive D2F (docs/batching.md): more throughput, load-dependent text

    def __post_init__(self) -> None:
        self.engine_config(1)  # the engine's own validation, raised at config load

    def engine_config(self, max_num_seqs: int) -> EngineConfig:
        return EngineConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=self.max_batched_tokens,
                            kv_cache_tokens=self.kv_cache_tokens or None,
                            adaptive=AdaptivePolicy(enabled=self.adaptive))


@dataclass(slots=True)
class TextModelConfig(ModelSection):
    name: str = "d2f-arith"
    model_dir: str = "checkpoints/arith-d2f-lora"  # relative = against the repo root
    # The base model of an adapter model_dir, when its base_model_name_or_path does not lead to it (a hub id
    # not under $TESSERA_MODEL_ROOT or the HF cache, an author's path); "" = find it (models.resolve).
    base_model_dir: str = ""  # relative = against the repo root
    method: str = "d2f"
    # How prompts are formatted (models.prompting): "auto" = the checkpoint's chat template (with BOS), else
    # its prompt_template (the tiny models), else as is; "chat" / "template" insist on one; "raw" = as is;
    # "bos" = as is after one BOS (base models such as Dream-v0-Base, as the D2F evaluation prompts them).
    prompt_format: str = "auto"
    decoder: DecoderDefaults = field(default_factory=DecoderDefaults)
    batching: BatchingDefaults = field(default_factory=BatchingDefaults)
    default_max_tokens: int = 128
    max_tokens_limit: int = 512  # further capped per request by the model's positions

    @property
    def base_path(self) -> Path | None:
        return repo_path(self.base_model_dir) if self.base_model_dir else None

    def __post_init__(self) -> None:
        ModelSection.__post_init__(self)  # (zero-argument super() does not work in slotted dataclasses)
        if self.method not in METHODS:
            raise ValueError(f"model.method must be one of {METHODS}, got {self.method!r}")
        if self.prompt_format not in PROMPT_MODES:
            raise ValueError(f"model.prompt_format must be one of {PROMPT_MODES}, got {self.prompt_format!r}")
        check_max_tokens(self.default_max_tokens, self.max_tokens_limit)
        self.decoder.options_for(self.method)


class TextArgs(AppArgs):
    """`args` of the text app (services.workers.builders:build_text_app)."""

    model: TextModelConfig = Field(default_factory=TextModelConfig)
