"""What every worker app's `args` share, without importing Ray or a model.

A worker app is a Ray Serve application built from `args` (the `args:` of its entry in the Serve
config file, services/workers/serve_config.yaml). Each family's args are a pydantic model (`AppArgs`)
whose sections are `@dataclass(slots=True)` configs validated on creation; both reject unknown keys,
and a bad value is reported with its path (`model.decoder.tau_conf`). Placement and scaling are not
args: they are the file's `deployments:` entries, in Serve's own schema.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from pydantic import BaseModel, ConfigDict, ValidationError

REPO_ROOT = Path(__file__).resolve().parents[2]
DTYPES = ("float32", "bfloat16", "float16")
# Set as `__pydantic_config__` on every section dataclass: pydantic then rejects unknown keys there too.
STRICT = ConfigDict(extra="forbid")


class ConfigError(ValueError):
    """A config that cannot run; the message names the file (if any) and the key's path."""


def format_errors(err: ValidationError, where: str = "") -> str:
    """One line per problem: `<where>.<key path>: <message>` (pydantic's own messages)."""
    lines = []
    for e in err.errors():
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in e["loc"]).lstrip(".")
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            msg = "unknown key"
        lines.append(f"{'.'.join(p for p in (where, path) if p)}: {msg}")
    return "; ".join(lines)


@dataclass(slots=True)
class ModelSection:
    """The fields every family's `model:` section has; a family's section extends it (and sets defaults)."""

    __pydantic_config__ = STRICT

    name: str = ""  # the name requests use and replies carry
    model_dir: str = ""  # relative = against the repo root
    torch_threads: int = 1  # intra-op threads per replica; 0 = torch's default (all cores)
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N" (cuda needs the deployment's num_gpus > 0)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if not self.name or not self.model_dir:
            raise ValueError("model.name and model.model_dir must not be empty")
        check_runtime(self.device, self.dtype, self.torch_threads)

    @property
    def path(self) -> Path:
        return repo_path(self.model_dir)


class AppArgs(BaseModel):
    """Base of every family's app args: unknown keys are errors; `model` is always a section with a name
    (each family narrows it to its own section)."""

    model_config = ConfigDict(extra="forbid")
    model: ModelSection

    @classmethod
    def load(cls, source: Self | Mapping[str, Any] | None = None, where: str = "args") -> Self:
        """Args from an instance or a parsed mapping (None = every default); ConfigError names the key."""
        if isinstance(source, cls):
            return source
        try:
            return cls.model_validate(dict(source or {}))
        except ValidationError as e:
            raise ConfigError(format_errors(e, where)) from None


def check_max_tokens(default: int, limit: int) -> None:
    """An answer-length default and its cap (text and understanding)."""
    if limit < 1:
        raise ValueError(f"model.max_tokens_limit must be >= 1, got {limit}")
    if not 1 <= default <= limit:
        raise ValueError(f"model.default_max_tokens must be in [1, max_tokens_limit={limit}], got {default}")


def check_resolution(resolution: int) -> None:
    """A square image side the models take: 0 (the checkpoint's native size) or whole 16-pixel patches."""
    if resolution < 0 or resolution % 16:
        raise ValueError(f"model.resolution must be 0 (native) or a positive multiple of 16, got {resolution}")


def check_runtime(device: str, dtype: str, torch_threads: int, where: str = "model") -> None:
    """Validate the torch runtime knobs every model section has (raised at config load)."""
    if torch_threads < 0:
        raise ValueError(f"{where}.torch_threads must be >= 0, got {torch_threads}")
    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:")):
        raise ValueError(f"{where}.device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dtype not in DTYPES:
        raise ValueError(f"{where}.dtype must be one of {DTYPES}, got {dtype!r}")


def repo_path(path: str) -> Path:
    """A model directory from config: absolute as given, relative against the repo root. Resolved where
    it is used (the replica), so a config built elsewhere still travels."""
    p = Path(path).expanduser()
    return p if p.is_absolute() else REPO_ROOT / p
