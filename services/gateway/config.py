"""Gateway and dispatcher configuration (YAML file, then TESSERA_* environment overrides)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml


@dataclass(slots=True)
class TextLimits:
    max_prompt_chars: int = 32768
    max_tokens: int = 1024  # largest max_tokens a request may ask for
    models: list[str] = field(default_factory=lambda: ["d2f-arith"])  # first = default

    def __post_init__(self) -> None:
        if self.max_prompt_chars <= 0 or self.max_tokens <= 0 or not self.models:
            raise ValueError("text limits need positive sizes and at least one model")


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
    worker_application: str = "text"
    max_in_flight: int = 8  # bounded window of jobs forwarded at once, per dispatcher
    claim_idle_ms: int = 15000  # a pending job idle this long belongs to a dead dispatcher
    heartbeat_ms: int = 3000  # how often a live dispatcher refreshes its jobs' idle time
    max_attempts: int = 3
    retry_backoff_ms: int = 500

    def __post_init__(self) -> None:
        if self.max_in_flight <= 0 or self.max_attempts <= 0:
            raise ValueError("max_in_flight and max_attempts must be positive")
        if self.heartbeat_ms * 2 > self.claim_idle_ms:
            raise ValueError("heartbeat_ms must be well below claim_idle_ms (at most half)")


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
    auth: AuthConfig = field(default_factory=AuthConfig)
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536 or not 0 <= self.metrics_port < 65536:
            raise ValueError("ports must be in [0, 65535]")
        if self.job_ttl_s < 60:
            raise ValueError("job_ttl_s must be at least 60")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GatewayConfig:
        nested = {"text": TextLimits, "auth": AuthConfig, "dispatcher": DispatcherConfig}
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
