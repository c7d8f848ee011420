"""Config loading and validation (no Ray, no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.serve_options import DeploymentOptions
from services.workers.text.config import (
    DEFAULT_CONFIG_PATH,
    REPO_ROOT,
    DecoderDefaults,
    TextModelConfig,
    TextWorkerConfig,
    load_config,
)


def test_shipped_yaml_is_the_embedded_model_with_the_paper_defaults() -> None:
    cfg = load_config()
    assert cfg == load_config(DEFAULT_CONFIG_PATH)
    assert cfg.model == TextModelConfig()  # the YAML and the code defaults name the same model
    m = cfg.model
    assert (m.name, m.method, m.default_max_tokens) == ("d2f-arith", "d2f", 128)
    assert m.path == REPO_ROOT / "checkpoints/arith-d2f-lora"
    assert m.decoder.options_for("d2f") == {"block_size": 32, "tau_add": 0.1, "tau_act": 0.95, "tau_conf": 0.9}
    kw = cfg.deployment.to_serve_kwargs()
    assert kw["name"] == "TextWorker" and kw["num_replicas"] == 1 and "autoscaling_config" not in kw
    assert kw["ray_actor_options"] == {"num_cpus": 1.0, "num_gpus": 0.0}


def test_absolute_model_dir_is_kept(tmp_path: Path) -> None:
    assert TextModelConfig(model_dir=str(tmp_path)).path == tmp_path


def test_autoscaling_replaces_num_replicas() -> None:
    cfg = TextWorkerConfig.from_dict({"deployment": {
        "autoscaling_config": {"min_replicas": 0, "max_replicas": 4, "target_ongoing_requests": 3},
        "ray_actor_options": {"num_cpus": 2, "num_gpus": 1}}, "model": {"device": "cuda"}})
    kw = cfg.deployment.to_serve_kwargs()
    assert "num_replicas" not in kw and kw["autoscaling_config"]["max_replicas"] == 4
    assert kw["autoscaling_config"]["target_ongoing_requests"] == 3.0
    assert kw["ray_actor_options"] == {"num_cpus": 2.0, "num_gpus": 1.0}


@pytest.mark.parametrize("data,message", [
    ({"model": {"method": "beam"}}, "model.method must be one of"),
    ({"model": {"decoder": {"tau_conf": 1.5}}}, "tau_conf must be in [0, 1]"),
    ({"model": {"decoder": {"block_size": 0}}}, "block_size must be positive"),
    ({"model": {"default_max_tokens": 600}}, "default_max_tokens must be in [1, max_tokens_limit=512]"),
    ({"model": {"dtype": "int8"}}, "model.dtype must be one of"),
    ({"model": {"device": "tpu"}}, "model.device must be"),
    ({"model": {"device": "cuda"}}, "num_gpus is 0"),
    ({"model": {"max_tokens": 5}}, "text worker config.model: unknown option(s) ['max_tokens']"),
    ({"model": {"torch_threads": "four"}}, "text worker config.model.torch_threads: expected int"),
    ({"deployment": {"num_replicas": 2, "autoscaling_config": {}}}, "not both"),
    ({"deployment": {"max_ongoing_requests": 0}}, "max_ongoing_requests must be >= 1"),
    ({"deployment": {"max_queued_requests": 0}}, "max_queued_requests must be -1"),
    ({"deployment": {"autoscaling_config": {"min_replicas": 3, "max_replicas": 2}}}, "max_replicas must be >="),
    ({"deployment": {"ray_actor_options": {"num_gpus": -1}}}, "must be >= 0"),
    ({"deployment": {"ray_actor_options": {"gpus": 1}}}, "unknown option(s) ['gpus']"),
])
def test_invalid_configs_name_the_problem(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        TextWorkerConfig.from_dict(data)
    assert message in str(err.value)


def test_yaml_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  method: nope\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: .*model\.method"):
        load_config(bad)


def test_decoder_knobs_per_method() -> None:
    d = DecoderDefaults()
    assert d.options_for("fast-dllm", {"tau_conf": 0.8}) == {"block_size": 32, "threshold": 0.8}
    assert d.options_for("ar") == {}
    with pytest.raises(ValueError, match="the vanilla decoder has no tau_add"):
        d.options_for("vanilla", {"tau_add": 0.2})


def test_deployment_needs_a_name() -> None:
    with pytest.raises(ValueError, match="name must not be empty"):
        DeploymentOptions(name="")
