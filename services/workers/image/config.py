"""Image worker config: which model (Orthus or NextStep) and its sampling defaults, the micro-batcher,
and the Ray Serve deployment options."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from services.common.serve_options import DeploymentOptions
from services.workers.base import WorkerConfig, check_gpu, check_runtime, repo_path
from services.workers.batching import BatchingConfig

DEFAULT_CONFIG_PATH = Path(__file__).with_name("config.yaml")
BACKENDS = ("orthus", "nextstep")


@dataclass(slots=True)
class ImageModelConfig:
    name: str = "shapes-orthus"  # the name requests use
    backend: str = "orthus"  # orthus | nextstep
    model_dir: str = "checkpoints/shapes-orthus"  # relative = against the repo root; holds vae/ too
    # The square size the model generates (and edits) at; 0: the checkpoint's native size (its VAE's sample_size).
    resolution: int = 0
    steps: int = 50  # head denoising steps per patch
    max_steps: int = 200
    guidance_scale: float = 3.0  # text CFG (T2I and editing)
    image_guidance_scale: float = 1.5  # image CFG (editing)
    preview_size: int = 16  # side of the low-resolution previews
    # Prompt rows are left-padded to a multiple of this many tokens, and only requests of one multiple
    # share a batch, so an image does not depend on its batch mates (backends.py). Larger: fewer
    # batches split by prompt length, more pad tokens per row; 1: only equal lengths batch together.
    pad_bucket: int = 32
    torch_threads: int = 1  # intra-op threads per replica; 0 = torch's default (all cores)
    device: str = "cpu"
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.name or not self.model_dir:
            raise ValueError("model.name and model.model_dir must not be empty")
        if self.backend not in BACKENDS:
            raise ValueError(f"model.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.resolution < 0 or self.resolution % 16:
            raise ValueError(f"model.resolution must be 0 (native) or a positive multiple of 16, got {self.resolution}")
        if not 1 <= self.steps <= self.max_steps:
            raise ValueError(f"model.steps must be in [1, max_steps={self.max_steps}], got {self.steps}")
        for name in ("guidance_scale", "image_guidance_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and 1.0 <= v <= 20.0):
                raise ValueError(f"model.{name} must be in [1, 20], got {v}")
        if self.pad_bucket < 1:
            raise ValueError(f"model.pad_bucket must be >= 1, got {self.pad_bucket}")
        if not 4 <= self.preview_size <= (self.resolution or 16):
            raise ValueError(f"model.preview_size must be in [4, resolution or 16], got {self.preview_size}")
        check_runtime(self.device, self.dtype, self.torch_threads)

    @property
    def path(self) -> Path:
        return repo_path(self.model_dir)


@dataclass(slots=True)
class ImageWorkerConfig(WorkerConfig):
    LABEL: ClassVar[str] = "image worker config"
    DEPLOYMENT_NAME: ClassVar[str] = "ImageWorker"
    DEFAULT_PATH: ClassVar[Path] = DEFAULT_CONFIG_PATH

    model: ImageModelConfig = field(default_factory=ImageModelConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    deployment: DeploymentOptions = field(default_factory=lambda: DeploymentOptions(name="ImageWorker"))

    def __post_init__(self) -> None:
        check_gpu(self.model.device, self.deployment)


def load_config(source: ImageWorkerConfig | Mapping[str, Any] | str | Path | None = None) -> ImageWorkerConfig:
    return ImageWorkerConfig.load(source)
