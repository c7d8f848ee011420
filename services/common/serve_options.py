"""Ray Serve deployment options every worker shares (text, image, understanding).

Placement and scaling live in config, not in code (the Ray Serve LLM pattern): a worker's YAML
holds a `deployment:` section that parses into `DeploymentOptions`, and the worker's builder
passes `to_serve_kwargs()` to `serve.deployment(...)`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(slots=True)
class AutoscalingOptions:
    """Ray Serve's replica autoscaler (`autoscaling_config`); field names are Serve's."""

    min_replicas: int = 1
    max_replicas: int = 1
    initial_replicas: int | None = None
    target_ongoing_requests: float = 2.0
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0
    look_back_period_s: float = 30.0
    metrics_interval_s: float = 10.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0:
            raise ValueError(f"autoscaling_config.min_replicas must be >= 0, got {self.min_replicas}")
        if self.max_replicas < max(1, self.min_replicas):
            raise ValueError(f"autoscaling_config.max_replicas must be >= max(1, min_replicas), "
                             f"got {self.max_replicas} (min_replicas {self.min_replicas})")
        if self.initial_replicas is not None and not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError(f"autoscaling_config.initial_replicas must be in [min_replicas, max_replicas], "
                             f"got {self.initial_replicas}")
        if self.target_ongoing_requests <= 0:
            raise ValueError(f"autoscaling_config.target_ongoing_requests must be positive, "
                             f"got {self.target_ongoing_requests}")
        for name in ("upscale_delay_s", "downscale_delay_s", "look_back_period_s", "metrics_interval_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"autoscaling_config.{name} must be >= 0, got {getattr(self, name)}")


@dataclass(slots=True)
class ActorResources:
    """Per-replica resources (`ray_actor_options`). Ray hides GPUs from an actor that asks for none."""

    num_cpus: float = 1.0
    num_gpus: float = 0.0
    memory: int | None = None  # bytes; None = no reservation
    accelerator_type: str | None = None

    def __post_init__(self) -> None:
        if self.num_cpus < 0 or self.num_gpus < 0:
            raise ValueError(f"ray_actor_options: num_cpus and num_gpus must be >= 0, "
                             f"got {self.num_cpus} and {self.num_gpus}")
        if self.memory is not None and self.memory <= 0:
            raise ValueError(f"ray_actor_options.memory must be positive bytes, got {self.memory}")

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}


@dataclass(slots=True)
class DeploymentOptions:
    """One Serve deployment: name, replicas (fixed or autoscaled), admission, health, resources."""

    name: str
    num_replicas: int | None = None  # None = autoscaling_config if given, else 1
    autoscaling_config: AutoscalingOptions | None = None
    max_ongoing_requests: int = 4  # per replica; decoding is compute-bound, keep it small
    max_queued_requests: int = -1  # per caller; -1 = unbounded (the gateway queues jobs in Redis)
    health_check_period_s: float = 10.0
    health_check_timeout_s: float = 30.0
    graceful_shutdown_timeout_s: float = 20.0
    ray_actor_options: ActorResources = field(default_factory=ActorResources)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("deployment.name must not be empty")
        if self.num_replicas is not None and self.autoscaling_config is not None:
            # Serve itself rejects both; say so at config load, not at deploy time.
            raise ValueError("deployment: set num_replicas or autoscaling_config, not both")
        if self.num_replicas is not None and self.num_replicas < 1:
            raise ValueError(f"deployment.num_replicas must be >= 1, got {self.num_replicas}")
        if self.max_ongoing_requests < 1:
            raise ValueError(f"deployment.max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")
        if self.max_queued_requests < -1 or self.max_queued_requests == 0:
            raise ValueError(f"deployment.max_queued_requests must be -1 (unbounded) or >= 1, "
                             f"got {self.max_queued_requests}")
        for name in ("health_check_period_s", "health_check_timeout_s", "graceful_shutdown_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"deployment.{name} must be positive, got {getattr(self, name)}")

    def to_serve_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `serve.deployment(cls, **kwargs)`."""
        kw: dict[str, Any] = {
            "name": self.name,
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            "health_check_period_s": self.health_check_period_s,
            "health_check_timeout_s": self.health_check_timeout_s,
            "graceful_shutdown_timeout_s": self.graceful_shutdown_timeout_s,
            "ray_actor_options": self.ray_actor_options.to_dict(),
        }
        if self.autoscaling_config is not None:
            kw["autoscaling_config"] = {k: v for k, v in dataclasses.asdict(self.autoscaling_config).items()
                                        if v is not None}
        else:
            kw["num_replicas"] = self.num_replicas or 1
        return kw


def from_dict(cls: type[T], data: Mapping[str, Any] | T, where: str = "") -> T:
    """Build a (nested) config dataclass from parsed YAML/JSON, naming the bad key on errors."""
    if isinstance(data, cls):
        return data
    where = where or cls.__name__
    if not isinstance(data, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ValueError(f"{where}: unknown option(s) {unknown}; expected some of {names}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}")
    try:
        return cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ValueError(f"{where}: {e}") from e


def _convert(tp: Any, value: Any, where: str) -> Any:
    args = typing.get_args(tp)
    optional = typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where}: must not be null")
    if optional:
        tp = next(a for a in args if a is not type(None))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    # YAML gives ints for "1"; accept them where floats are expected, but never bools as numbers.
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and (not isinstance(value, tp) or (tp is not bool and isinstance(value, bool))):
        raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value
