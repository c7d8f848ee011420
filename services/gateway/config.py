"""Gateway and dispatcher configuration (YAML file, then TESSERA_* environment overrides)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

SERVICES = ("text", "image", "understanding")  # one Redis queue each


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
class DispatcherConfig:
    enabled: bool = True  # run dispatchers inside the gateway process
    worker_address: str = "127.0.0.1:9000"  # Ray Serve gRPC proxy
    worker_application: str = "text"  # the text worker's Serve application
    image_application: str = "image"
    understanding_application: str = "understanding"
    services: list[str] = field(default_factory=lambda: list(SERVICES))  # queues this process dispatches
    max_in_flight: int = 8  # bounded window of jobs forwarded at once, per dispatcher
    claim_idle_ms: int = 15000  # a pending job idle this long belongs to a dead dispatcher
    heartbeat_ms: int = 3000  # how often a live dispatcher refreshes its jobs' idle time
    max_attempts: int = 3
    retry_backoff_ms: int = 500
    # How long a job's event write waits for more events to share it (see runners._ChunkWriter):
    # fewer Redis round trips for fast workers, at most this much later to a watcher.
    chunk_linger_ms: float = 2.0

    def __post_init__(self) -> None:
        if self.max_in_flight <= 0 or self.max_attempts <= 0:
            raise ValueError("max_in_flight and max_attempts must be positive")
        if not 0 <= self.chunk_linger_ms <= 1000:
            raise ValueError("chunk_linger_ms must be in [0, 1000]")
        if self.heartbeat_ms * 2 > self.claim_idle_ms:
            raise ValueError("heartbeat_ms must be well below claim_idle_ms (at most half)")
        if unknown := set(self.services) - set(SERVICES):
            raise ValueError(f"dispatcher.services: unknown {sorted(unknown)}; expected some of {list(SERVICES)}")

    @property
    def applications(self) -> dict[str, str]:
        """Serve application per dispatched service."""
        apps = {"text": self.worker_application, "image": self.image_application,
                "understanding": self.understanding_application}
        return {s: apps[s] for s in self.services}


@dataclass(slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    metrics_port: int = 9464  # 0 = no metrics HTTP server
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
        nested = {"text": TextLimits, "images": ImageLimits, "understanding": UnderstandingLimits, "auth": AuthConfig,
                  "dispatcher": DispatcherConfig}
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown gateway config keys: {sorted(unknown)}")
        kw = {k: (nested[k](**v) if k in nested else v) for k, v in d.items()}
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
