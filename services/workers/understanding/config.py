"""The understanding app's args: the Orthus model that answers, its answer limits and the micro-batcher
(placement and scaling are the Serve config's `deployments:`)."""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import Field

from services.workers.batching import BatchingConfig
from services.workers.config import AppArgs, ModelSection, check_max_tokens, check_resolution


@dataclass(slots=True)
class UnderstandingModelConfig(ModelSection):
    name: str = "shapes-orthus"
    model_dir: str = "checkpoints/shapes-orthus"  # an Orthus checkpoint + tokenizer.json + vae/
    # Input images are resized to this square; 0: the checkpoint's native size (its VAE's sample_size).
    resolution: int = 0
    default_max_tokens: int = 16
    max_tokens_limit: int = 64

    def __post_init__(self) -> None:
        ModelSection.__post_init__(self)
        check_resolution(self.resolution)
        check_max_tokens(self.default_max_tokens, self.max_tokens_limit)


class UnderstandingArgs(AppArgs):
    """`args` of the understanding app (services.workers.builders:build_understanding_app)."""

    model: UnderstandingModelConfig = Field(default_factory=UnderstandingModelConfig)
    batching: BatchingConfig = Field(default_factory=BatchingConfig)
