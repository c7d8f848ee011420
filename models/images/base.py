"""What every image backend shares: the request (`ImageJob`), the per-patch hook and the protocol."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from models.images.parts import ImageParts

# Called after each patch with (patches done, newest tokens [B, C]). It never changes results, and
# raising from it stops generation: progress, previews and cancellation in the image worker.
PatchHook = Callable[[int, torch.Tensor], None]


@dataclass(slots=True)
class ImageJob:
    """One validated image request."""

    kind: str  # "t2i" | "edit"
    text: str  # prompt or instruction
    steps: int
    guidance_scale: float
    image_guidance_scale: float  # edit only (0 for t2i, so it does not split batches)
    seed: int
    # The caller's output size: the model generates at its resolution and the caller resamples.
    width: int
    height: int
    preview: bool  # whether the caller wants previews (the hook sees every job's tokens either way)
    source: np.ndarray | None = None  # edit: uint8 (res, res, 3)
    # The length its prompt rows are padded to (ImageBackend.padded_length), fixed once when the
    # request is planned; 0 = not planned yet (the backend works it out).
    pad_to: int = 0

    @property
    def batch_key(self) -> tuple[str, int, float, float, int]:
        return (self.kind, self.steps, self.guidance_scale, self.image_guidance_scale, self.pad_to)


class ImageBackend(Protocol):
    name: str
    parts: ImageParts

    def padded_length(self, job: ImageJob) -> int:
        """The length the job's prompt rows are padded to: part of its batch key."""
        ...

    def generate(self, jobs: Sequence[ImageJob], hook: PatchHook | None) -> torch.Tensor:
        """Images (B, 3, res, res) in [-1, 1] for jobs of one batch key."""
        ...

    def next_token(self, text: str, context: torch.Tensor, generator: torch.Generator, steps: int,
                   guidance_scale: float) -> torch.Tensor:
        """Image token k [C] drawn after the caption and the first k tokens `context` [k, C], with T2I
        guidance: what the model draws next from a given context (the lab's context probe)."""
        ...


def round_up(n: int, bucket: int) -> int:
    return -(-n // bucket) * bucket


def generators(jobs: Sequence[ImageJob]) -> list[torch.Generator]:
    """One generator per request, seeded by it: its noise does not depend on its batch mates."""
    return [torch.Generator().manual_seed(j.seed) for j in jobs]
