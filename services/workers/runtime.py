"""What every engine does the same way in its replica: load-time checks and the request's model name."""

from __future__ import annotations

import torch

from services.workers.config import ModelSection
from services.workers.protocol import InvalidRequestError


def prepare_replica(model: ModelSection) -> None:
    """Fail at start-up on a missing checkpoint (not on the first request), and give torch the replica's
    thread budget: replicas share the node's cores, so each runs the few threads it asked Ray for."""
    if not model.path.exists():
        raise FileNotFoundError(f"model dir {model.path} does not exist (is the checkpoint trained yet?)")
    if model.torch_threads:
        torch.set_num_threads(model.torch_threads)


def check_model_name(requested: str, model: ModelSection) -> None:
    """A request may name the model ("" = this worker's); another name is the caller's mistake."""
    if requested and requested != model.name:
        raise InvalidRequestError(f"unknown model {requested!r}; this worker serves {model.name!r}")
