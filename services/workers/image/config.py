"""The image app's args: which model (Orthus or NextStep), its sampling defaults and the micro-batcher
(placement and scaling are the Serve config's `deployments:`)."""

from __future__ import annotations

import math
from dataclasses import astuple, dataclass, field

from pydantic import Field

from models.images import NextStepSampling
from services.workers.batching import BatchingConfig
from services.workers.config import STRICT, AppArgs, ModelSection, check_resolution

BACKENDS = ("orthus", "nextstep")


@dataclass(slots=True)
class NextStepSection(NextStepSampling):
    """`model.nextstep`: NextStep's prompt text and sampler (models.images.NextStepSampling documents
    each key); unknown keys are errors. Only with `backend: nextstep`."""

    __pydantic_config__ = STRICT


@dataclass(slots=True)
class ImageModelConfig(ModelSection):
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
    # share a batch, so an image does not depend on its batch mates (models/images). Larger: fewer
    # batches split by prompt length, more pad tokens per row; 1: only equal lengths batch together.
    pad_bucket: int = 32
    nextstep: NextStepSection = field(default_factory=NextStepSection)

    def __post_init__(self) -> None:
        ModelSection.__post_init__(self)
        if self.backend not in BACKENDS:
            raise ValueError(f"model.backend must be one of {BACKENDS}, got {self.backend!r}")
        if self.backend != "nextstep" and astuple(self.nextstep) != astuple(NextStepSection()):
            raise ValueError(f"model.nextstep applies to backend nextstep only (backend is {self.backend!r})")
        check_resolution(self.resolution)
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


class ImageArgs(AppArgs):
    """`args` of the image app (services.workers.builders:build_image_app)."""

    model: ImageModelConfig = Field(default_factory=ImageModelConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
