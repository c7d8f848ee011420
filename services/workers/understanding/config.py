"""Understanding worker config: the Orthus model that answers, its answer limits, the micro-batcher,
and the Ray Serve deployment options."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from services.common.serve_options import DeploymentOptions
from services.workers.base import WorkerConfig, check_gpu, check_runtime, repo_path
from services.workers.batching import BatchingConfig

DEFAULT_CONFIG_PATH = Path(__file__).with_name("config.yaml")


@dataclass(slots=True)
class UnderstandingModelConfig:
    name: str = "shapes-orthus"
    model_dir: str = "checkpoints/shapes-orthus"  # an Orthus checkpoint + tokenizer.json + vae/
    # Input images are resized to this square; 0: the checkpoint's native size (its VAE's sample_size).
    resolution: int = 0
    default_max_tokens: int = 16
    max_tokens_limit: int = 64
    torch_threads: int = 1
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.name or not self.model_dir:
            raise ValueError("model.name and model.model_dir must not be empty")
        if self.resolution < 0 or self.resolution % 16:
            raise ValueError(f"model.resolution must be 0 (native) or a positive multiple of 16, got {self.resolution}")
        if self.max_tokens_limit < 1:
            raise ValueError(f"model.max_tokens_limit must be >= 1, got {self.max_tokens_limit}")
        if not 1 <= self.default_max_tokens <= self.max_tokens_limit:
            raise ValueError(f"model.default_max_tokens must be in [1, max_tokens_limit={self.max_tokens_limit}], "
                             f"got {self.default_max_tokens}")
        check_runtime(self.device, self.dtype, self.torch_threads)

    @property
    def path(self) -> Path:
        return repo_path(self.model_dir)


@dataclass(slots=True)
class UnderstandingWorkerConfig(WorkerConfig):
    LABEL: ClassVar[str] = "understanding worker config"
    DEPLOYMENT_NAME: ClassVar[str] = "UnderstandingWorker"
    DEFAULT_PATH: ClassVar[Path] = DEFAULT_CONFIG_PATH

    model: UnderstandingModelConfig = field(default_factory=UnderstandingModelConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    deployment: DeploymentOptions = field(default_factory=lambda: DeploymentOptions(name="UnderstandingWorker"))

    def __post_init__(self) -> None:
        check_gpu(self.model.device, self.deployment)


def load_config(source: UnderstandingWorkerConfig | Mapping[str, Any] | str | Path | None = None,
                ) -> UnderstandingWorkerConfig:
    return UnderstandingWorkerConfig.load(source)
