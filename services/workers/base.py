"""What every worker's config shares (text, image, understanding), without importing Ray or a model.

A worker's YAML has a `model:` section (its own dataclass) and a `deployment:` section
(`DeploymentOptions`). `WorkerConfig` gives each worker's top-level config the same loading rules:
from a config object, a parsed mapping or a YAML path (None = the worker's shipped config.yaml),
errors naming the file and the bad key, and the deployment name defaulted per worker.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

from services.common.serve_options import DeploymentOptions, from_dict

REPO_ROOT = Path(__file__).resolve().parents[2]
DTYPES = ("float32", "bfloat16", "float16")

W = TypeVar("W", bound="WorkerConfig")


def check_runtime(device: str, dtype: str, torch_threads: int, where: str = "model") -> None:
    """Validate the torch runtime knobs every model section has (raised at config load)."""
    if torch_threads < 0:
        raise ValueError(f"{where}.torch_threads must be >= 0, got {torch_threads}")
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"{where}.device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dtype not in DTYPES:
        raise ValueError(f"{where}.dtype must be one of {DTYPES}, got {dtype!r}")


def check_gpu(device: str, deployment: DeploymentOptions) -> None:
    if device.startswith("cuda") and deployment.ray_actor_options.num_gpus <= 0:
        raise ValueError("model.device is cuda but deployment.ray_actor_options.num_gpus is 0: "
                         "Ray would hide every GPU from the replica")


def repo_path(path: str) -> Path:
    """A model directory from config: absolute as given, relative against the repo root. Resolved where
    it is used (the replica), so a config built elsewhere still travels."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p


def job_seed(job_id: str) -> int:
    """A seed fixed by the job id, so a retried job (no seed given) replays the same samples."""
    return int.from_bytes(hashlib.blake2b(job_id.encode(), digest_size=8).digest(), "big") >> 1


class WorkerConfig:
    """Mixin for a worker's top-level config dataclass (fields `model` and `deployment`)."""

    LABEL: ClassVar[str] = "worker config"  # names the config in error messages
    DEPLOYMENT_NAME: ClassVar[str] = "Worker"  # default Serve deployment name
    DEFAULT_PATH: ClassVar[Path]  # the shipped config.yaml

    @classmethod
    def from_dict(cls: type[W], data: Mapping[str, Any]) -> W:
        data = dict(data)
        if isinstance(data.get("deployment"), Mapping):
            data["deployment"] = {"name": cls.DEPLOYMENT_NAME, **data["deployment"]}
        return from_dict(cls, data, cls.LABEL)

    @classmethod
    def from_yaml(cls: type[W], path: str | Path) -> W:
        data = yaml.safe_load(Path(path).read_text()) or {}
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from e

    @classmethod
    def load(cls: type[W], source: W | Mapping[str, Any] | str | Path | None = None) -> W:
        """A config from an object, a parsed mapping or a YAML path (None = the shipped config.yaml)."""
        if source is None:
            return cls.from_yaml(cls.DEFAULT_PATH)
        if isinstance(source, cls):
            return source
        if isinstance(source, Mapping):
            return cls.from_dict(source)
        return cls.from_yaml(source)  # type: ignore[arg-type]
