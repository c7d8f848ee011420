"""Dispatcher configuration: the dispatch settings, and the file of a dispatcher process of its own.

`DispatcherConfig` is what a dispatcher runs with, wherever it runs; the gateway embeds one as its
`dispatcher:` section to dispatch in-process. `DispatcherProcessConfig` is what
`python -m services.dispatcher --config FILE` reads (config.yaml beside this file): the job store it
consumes, then the same `dispatcher:` section, so a key has one path in both files.
Unknown keys are errors that name their path; environment overrides: TESSERA_REDIS_URL, TESSERA_WORKER_ADDRESS.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.config import check_keys
from services.queue.kinds import Service


@dataclass(slots=True)
class DispatcherConfig:
    enabled: bool = True  # the gateway runs dispatchers in its own process (a dispatcher process ignores it)
    worker_address: str = "127.0.0.1:9000"  # Ray Serve gRPC proxy
    worker_application: str = "text"  # the text worker's Serve application
    image_application: str = "image"
    understanding_application: str = "understanding"
    services: list[str] = field(default_factory=lambda: list(Service))  # queues this process dispatches
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
        if unknown := set(self.services) - set(Service):
            raise ValueError(f"dispatcher.services: unknown {sorted(unknown)}; expected some of {list(Service)}")
        self.services = [Service(s) for s in self.services]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], path: str = "dispatcher") -> DispatcherConfig:
        """From a parsed `dispatcher:` section; `path` names it in errors."""
        return cls(**check_keys(cls, d, path, "dispatcher config"))

    @property
    def applications(self) -> dict[str, str]:
        """Serve application per dispatched service."""
        apps = {Service.TEXT: self.worker_application, Service.IMAGE: self.image_application,
                Service.UNDERSTANDING: self.understanding_application}
        return {s: apps[Service(s)] for s in self.services}


@dataclass(slots=True)
class DispatcherProcessConfig:
    """A dispatcher process of its own: the job store it consumes and its dispatch settings."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    key_prefix: str = "tessera:"  # must match the gateway's: it names the queues and jobs
    job_ttl_s: int = 86400  # how long ended jobs' records and events stay readable
    dispatcher: DispatcherConfig = field(default_factory=DispatcherConfig)

    def __post_init__(self) -> None:
        if self.job_ttl_s < 60:
            raise ValueError("job_ttl_s must be at least 60")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DispatcherProcessConfig:
        kw = dict(check_keys(cls, d, "", "dispatcher config"))
        if "dispatcher" in kw:
            kw["dispatcher"] = DispatcherConfig.from_dict(kw["dispatcher"] or {}, "dispatcher")
        return cls(**kw)

    @classmethod
    def load(cls, path: str | Path | None = None) -> DispatcherProcessConfig:
        d: dict[str, Any] = (yaml.safe_load(Path(path).read_text()) or {}) if path else {}
        cfg = cls.from_dict(d)
        # Environment overrides for what differs per deployment (the gateway reads the same names).
        if v := os.environ.get("TESSERA_REDIS_URL"):
            cfg.redis_url = v
        if v := os.environ.get("TESSERA_WORKER_ADDRESS"):
            cfg.dispatcher.worker_address = v
        return cfg
