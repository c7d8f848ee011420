"""k8s/kserve/: a ServingRuntime and an InferenceService per family, validated against the strict
schemas derived from KServe's CRDs, consistent with each other, with the worker image the Helm chart
uses and with the Serve config the command reads. (tests/integration/test_kserve.py runs each
runtime's command as a local process.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.workers import serve_config
from services.workers.config import REPO_ROOT
from services.workers.kserve.__main__ import build, parse
from tests.k8s.validate import validate_custom

MANIFESTS = REPO_ROOT / "k8s/kserve"
FAMILIES = ("text", "image", "understanding")


def docs(family: str) -> dict[str, dict[str, Any]]:
    out = {d["kind"]: d for d in yaml.safe_load_all((MANIFESTS / f"{family}.yaml").read_text()) if d}
    assert set(out) == {"ServingRuntime", "InferenceService"}
    return out


def runtime_argv(family: str) -> list[str]:
    c = docs(family)["ServingRuntime"]["spec"]["containers"][0]
    assert c["command"] == ["python", "-m", "services.workers.kserve"]
    return list(c["args"])


@pytest.mark.parametrize("family", FAMILIES)
def test_manifests_are_valid_and_consistent(family: str) -> None:
    d = docs(family)
    for obj in d.values():
        assert validate_custom(obj) == [], obj["kind"]
    runtime, isvc = d["ServingRuntime"], d["InferenceService"]
    fmt = runtime["spec"]["supportedModelFormats"][0]
    model = isvc["spec"]["predictor"]["model"]
    assert model["modelFormat"] == {"name": fmt["name"], "version": fmt["version"]}
    assert model["runtime"] == runtime["metadata"]["name"]
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
    pred = isvc["spec"]["predictor"]
    assert 1 <= pred["minReplicas"] <= pred["maxReplicas"]
    values = yaml.safe_load((REPO_ROOT / "helm/tessera/values.yaml").read_text())["image"]["worker"]
    assert runtime["spec"]["containers"][0]["image"] == f"{values['repository']}:{values['tag']}"


@pytest.mark.parametrize("family", FAMILIES)
def test_the_runtimes_command_builds_the_familys_model(family: str) -> None:
    a = parse(runtime_argv(family))
    assert a.family == family
    model = build(a)  # the Serve config's app args with the manifest's overrides, validated (no GPU needed)
    assert model.args.model.device.startswith("cuda")
    ready = docs(family)["ServingRuntime"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"]
    assert ready == f"/v2/models/{model.name}/ready"
    names = {a.name: serve_config.app_args(serve_config.load(), a.name).model.name
             for a in serve_config.load().applications}
    assert model.name in names.values()


def test_unknown_args_in_a_runtime_fail_naming_the_key(tmp_path: Path) -> None:
    a = parse(["--family", "text", "--args", '{"model": {"devise": "cuda"}}'])
    with pytest.raises(ValueError, match=r"model.devise"):
        build(a)
