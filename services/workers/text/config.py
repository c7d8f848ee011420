"""Text worker config: which model and how it decodes, plus its Ray Serve deployment options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from models.decoders import METHODS, D2FConfig
from services.common.serve_options import DeploymentOptions
from services.workers.base import REPO_ROOT, WorkerConfig, check_gpu, check_runtime, repo_path

__all__ = ["DEFAULT_CONFIG_PATH", "REPO_ROOT", "DecoderDefaults", "TextModelConfig", "TextWorkerConfig",
           "load_config"]

DEFAULT_CONFIG_PATH = Path(__file__).with_name("config.yaml")
D2F_KNOBS = ("tau_add", "tau_act", "tau_conf")


@dataclass(slots=True)
class DecoderDefaults:
    """Decoding knobs used when a request leaves them 0 / unset (D2F's names)."""

    block_size: int = 32
    tau_add: float = 0.1
    tau_act: float = 0.95
    tau_conf: float = 0.9

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
class TextModelConfig:
    name: str = "d2f-arith"
    model_dir: str = "checkpoints/arith-d2f-lora"  # relative = against the repo root
    method: str = "d2f"
    decoder: DecoderDefaults = field(default_factory=DecoderDefaults)
    default_max_tokens: int = 128
    max_tokens_limit: int = 512  # further capped per request by the model's positions
    torch_threads: int = 1  # intra-op threads per replica; 0 = torch's default (all cores)
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("model.name must not be empty")
        if not self.model_dir:
            raise ValueError("model.model_dir must not be empty")
        if self.method not in METHODS:
            raise ValueError(f"model.method must be one of {METHODS}, got {self.method!r}")
        if self.max_tokens_limit < 1:
            raise ValueError(f"model.max_tokens_limit must be >= 1, got {self.max_tokens_limit}")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError(f"model.default_max_tokens must be in [1, max_tokens_limit={self.max_tokens_limit}], "
                             f"got {self.default_max_tokens}")
        check_runtime(self.device, self.dtype, self.torch_threads)
        self.decoder.options_for(self.method)

    @property
    def path(self) -> Path:
        return repo_path(self.model_dir)


@dataclass(slots=True)
class TextWorkerConfig(WorkerConfig):
    LABEL: ClassVar[str] = "text worker config"
    DEPLOYMENT_NAME: ClassVar[str] = "TextWorker"
    DEFAULT_PATH: ClassVar[Path] = DEFAULT_CONFIG_PATH

    model: TextModelConfig = field(default_factory=TextModelConfig)
    deployment: DeploymentOptions = field(default_factory=lambda: DeploymentOptions(name="TextWorker"))

    def __post_init__(self) -> None:
        check_gpu(self.model.device, self.deployment)


def load_config(source: TextWorkerConfig | Mapping[str, Any] | str | Path | None = None) -> TextWorkerConfig:
    """A config from an object, a parsed mapping or a YAML path (None = the shipped config.yaml)."""
    return TextWorkerConfig.load(source)
