"""The dispatcher's own config: its file, unknown keys, the runner per kind, and that the dispatcher
depends on nothing of the gateway's."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from services.dispatcher.config import DispatcherConfig, DispatcherProcessConfig
from services.dispatcher.runners import RUNNERS
from services.queue.kinds import JobKind, Service

HERE = Path(__file__).resolve().parent


def test_every_kind_has_a_runner() -> None:
    assert set(RUNNERS) == set(JobKind), "a kind with no runner fails every job of that kind"


def test_every_service_has_a_serve_application() -> None:
    assert set(DispatcherConfig().applications) == set(Service)
    assert DispatcherConfig(services=["image"]).applications == {Service.IMAGE: "image"}


def test_unknown_keys_are_rejected_by_their_path() -> None:
    with pytest.raises(ValueError, match=r"\['dispatcher\.max_infligth'\]"):
        DispatcherProcessConfig.from_dict({"dispatcher": {"max_infligth": 3}})
    with pytest.raises(ValueError, match=r"\['redis'\]"):
        DispatcherProcessConfig.from_dict({"redis": "redis://x"})
    with pytest.raises(ValueError, match="expected a mapping"):
        DispatcherProcessConfig.from_dict({"dispatcher": [1]})


def test_values_are_validated() -> None:
    with pytest.raises(ValueError, match="heartbeat_ms"):
        DispatcherConfig(heartbeat_ms=10000, claim_idle_ms=15000)
    with pytest.raises(ValueError, match="unknown"):
        DispatcherConfig(services=["video"])
    with pytest.raises(ValueError, match="job_ttl_s"):
        DispatcherProcessConfig(job_ttl_s=1)


def test_the_shipped_file_is_the_defaults_and_env_overrides_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    assert DispatcherProcessConfig.load(HERE / "config.yaml") == DispatcherProcessConfig()
    monkeypatch.setenv("TESSERA_REDIS_URL", "redis://elsewhere:6380/1")
    monkeypatch.setenv("TESSERA_WORKER_ADDRESS", "worker:9001")
    cfg = DispatcherProcessConfig.load(None)
    assert cfg.redis_url == "redis://elsewhere:6380/1" and cfg.dispatcher.worker_address == "worker:9001"


def test_the_gateways_dispatcher_section_has_the_same_keys() -> None:
    ours = yaml.safe_load((HERE / "config.yaml").read_text())["dispatcher"]
    gateways = yaml.safe_load((HERE.parent / "gateway" / "config.yaml").read_text())["dispatcher"]
    assert set(ours) == set(gateways)
    assert DispatcherConfig.from_dict(ours) == DispatcherConfig.from_dict(gateways)


def test_the_dispatcher_imports_nothing_from_the_gateway() -> None:
    # The gateway may embed a dispatcher (gateway -> dispatcher); never the other way round.
    offenders = []
    for path in sorted(HERE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("services.gateway")]
    assert not offenders, offenders
