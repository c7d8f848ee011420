"""Gateway configuration (YAML file, then TESSERA_* environment overrides).

The `dispatcher:` section is the dispatcher's own config (services/dispatcher/config.py), for the
dispatchers the gateway runs in-process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.config import check_keys
from services.dispatcher.config import DispatcherConfig


@dataclass(slots=True)
class TextLimits:
    max_prompt_chars: int = 32768
    max_tokens: int = 1024  # largest max_tokens a request may ask for
    models: list[str] = field(default_factory=lambda: ["d2f-arith"])  # first = default

    def __post_init__(self) -> None:
        if self.max_prompt_chars <= 0 or self.max_tokens <= 0 or not self.models:
            raise ValueError("text limits need positive sizes and at least one model")


@dataclass(slots=True)
class ImageLimits:
    """Limits of image generation and editing requests (checked before anything is enqueued)."""

    max_prompt_chars: int = 1000
    max_image_bytes: int = 4 << 20  # an edit's input image, encoded
    min_side: int = 8  # input and output sides, pixels
    max_side: int = 1024
    max_steps: int = 200
    models: list[str] = field(default_factory=lambda: ["shapes-nextstep"])  # first = default

    def __post_init__(self) -> None:
        if min(self.max_prompt_chars, self.max_image_bytes, self.min_side, self.max_steps) <= 0 or not self.models:
            raise ValueError("image limits need positive sizes and at least one model")
        if self.max_side < self.min_side:
            raise ValueError(f"images.max_side ({self.max_side}) must be >= min_side ({self.min_side})")


@dataclass(slots=True)
class UnderstandingLimits:
    """Limits of understanding requests (the image limits are ImageLimits')."""

    max_question_chars: int = 1000
    max_tokens: int = 64
    models: list[str] = field(default_factory=lambda: ["shapes-orthus"])  # first = default

    def __post_init__(self) -> None:
        if self.max_question_chars <= 0 or self.max_tokens <= 0 or not self.models:
            raise ValueError("understanding limits need positive sizes and at least one model")


@dataclass(slots=True)
class AuthConfig:
    enabled: bool = True
    keys_file: str = ""  # YAML: keys: [{id, sha256, rate_per_s, burst}]
    env_var: str = "TESSERA_API_KEYS"  # "id:sha256[:rate[:burst]],..."
    default_rate_per_s: float = 20.0
    default_burst: int = 40

    def __post_init__(self) -> None:
        if self.default_rate_per_s <= 0 or self.default_burst <= 0:
            raise ValueError("rate limits must be positive")


@dataclass(slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464  # 0 = no metrics HTTP server
    metrics_host: str = "127.0.0.1"  # 0.0.0.0 where Prometheus scrapes from another host (the chart sets it)
    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "tessera:"
    job_ttl_s: int = 86400
    grace_s: float = 5.0
    text: TextLimits = field(default_factory=TextLimits)
    images: ImageLimits = field(default_factory=ImageLimits)
    understanding: UnderstandingLimits = field(default_factory=UnderstandingLimits)
    auth: AuthConfig = field(default_factory=AuthConfig)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536 or not 0 <= self.metrics_port < 65536:
            raise ValueError("ports must be in [0, 65535]")
        if self.job_ttl_s < 60:
            raise ValueError("job_ttl_s must be at least 60")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GatewayConfig:
        nested: dict[str, type] = {"text": TextLimits, "images": ImageLimits, "understanding": UnderstandingLimits,
                                   "auth": AuthConfig}
        kw: dict[str, Any] = {}
        for k, v in check_keys(cls, d, "", "gateway config").items():
            if k == "dispatcher":  # the dispatcher's own section (its config checks its keys)
                kw[k] = DispatcherConfig.from_dict(v or {}, k)
            elif k in nested:
                kw[k] = nested[k](**check_keys(nested[k], v or {}, k, "gateway config"))
            else:
                kw[k] = v
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path | None = None) -> GatewayConfig:
        d: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {} if path else {}
        cfg = cls.from_dict(d)
        # Environment overrides for what differs per deployment.
        if v := os.environ.get("TESSERA_REDIS_URL"):
            cfg.redis_url = v
        if v := os.environ.get("TESSERA_GATEWAY_PORT"):
            cfg.port = int(v)
        if v := os.environ.get("TESSERA_WORKER_ADDRESS"):
            cfg.dispatcher.worker_address = v
        return cfg

