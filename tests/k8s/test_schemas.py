"""The strict CRD schemas in tests/k8s/schemas and the validate helpers the chart tests use on every
rendered object; and the helm/kubectl binaries `make setup` installs (scripts/k8s_tools.sh)."""

from __future__ import annotations

import copy
import filecmp
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from tests.k8s.validate import (
    SCHEMAS,
    UnknownKindError,
    known_custom_kinds,
    validate,
    validate_builtin,
    validate_custom,
)

ROOT = Path(__file__).resolve().parents[2]
CRDS = ROOT.parent / "shared" / "k8s-crds"

RAY_SERVICE: dict[str, Any] = {
    "apiVersion": "ray.io/v1",
    "kind": "RayService",
    "metadata": {"name": "tessera", "labels": {"app.kubernetes.io/name": "tessera"}},
    "spec": {
        "serveConfigV2": "applications:\n- name: text\n  import_path: services.workers.text:app\n",
        "rayClusterConfig": {
            "headGroupSpec": {
                "rayStartParams": {"num-cpus": "0"},
                "template": {"spec": {"containers": [{
                    "name": "ray-head",
                    "image": "tessera:dev",
                    "ports": [{"containerPort": 6379, "name": "gcs"}],
                    "resources": {"limits": {"cpu": 2, "memory": "4Gi"}},  # int-or-string both ways
                }]}},
            },
        },
    },
}
SCALED_OBJECT: dict[str, Any] = {
    "apiVersion": "keda.sh/v1alpha1",
    "kind": "ScaledObject",
    "metadata": {"name": "tessera-text", "namespace": "tessera"},
    "spec": {
        "scaleTargetRef": {"name": "tessera-text"},
        "minReplicaCount": 1,
        "maxReplicaCount": 4,
        "triggers": [{"type": "prometheus", "metadata": {
            "serverAddress": "http://prometheus:9090", "query": "sum(tessera_queue_depth)", "threshold": "8"}}],
    },
}
SERVICE_MONITOR: dict[str, Any] = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "ServiceMonitor",
    "metadata": {"name": "tessera-gateway"},
    "spec": {
        "selector": {"matchLabels": {"app.kubernetes.io/component": "gateway"}},
        "endpoints": [{"port": "metrics", "interval": "15s", "path": "/metrics"}],
    },
}
DEPLOYMENT: dict[str, Any] = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "tessera-gateway"},
    "spec": {
        "selector": {"matchLabels": {"app": "gateway"}},
        "template": {"metadata": {"labels": {"app": "gateway"}},
                     "spec": {"containers": [{"name": "gateway", "image": "tessera:dev"}]}},
    },
}


def _files(top: Path) -> list[Path]:
    return sorted(p.relative_to(top) for p in top.rglob("*") if p.is_file())


@pytest.mark.skipif(not CRDS.is_dir(), reason=f"no upstream CRDs at {CRDS} (they lie beside the main checkout "
                                               "only), so the committed schemas cannot be regenerated here")
def test_committed_schemas_are_what_the_script_makes_from_the_crds(tmp_path: Path) -> None:
    out = tmp_path / "schemas"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "crd_schemas.py"), "--crds", str(CRDS), "--out", str(out)],
                   check=True, capture_output=True, timeout=120)
    assert _files(out) == _files(SCHEMAS)
    differ = [str(p) for p in _files(out) if not filecmp.cmp(out / p, SCHEMAS / p, shallow=False)]
    assert not differ, f"stale: {differ}; run python scripts/crd_schemas.py"


def test_every_kind_the_chart_may_render_has_a_schema() -> None:
    assert sorted(known_custom_kinds()) == [
        ("keda.sh/v1alpha1", "ScaledObject"),
        ("monitoring.coreos.com/v1", "PodMonitor"),
        ("monitoring.coreos.com/v1", "PrometheusRule"),
        ("monitoring.coreos.com/v1", "ServiceMonitor"),
        ("ray.io/v1", "RayService"),
        ("serving.kserve.io/v1alpha1", "ServingRuntime"),
        ("serving.kserve.io/v1beta1", "InferenceService"),
    ]


def _loose_objects(node: Any, path: str = "$") -> list[str]:
    """Object schemas with properties that still admit unknown fields (outside anyOf/oneOf/allOf/not)."""
    if not isinstance(node, dict):
        return []
    found = []
    if "properties" in node and "additionalProperties" not in node \
            and not node.get("x-kubernetes-preserve-unknown-fields"):
        found.append(path)
    for name, sub in node.get("properties", {}).items():
        found += _loose_objects(sub, f"{path}.{name}")
    for key in ("items", "additionalProperties"):
        found += _loose_objects(node.get(key), f"{path}.{key}")
    return found


@pytest.mark.parametrize("path", sorted(SCHEMAS.glob("*/*.json")), ids=lambda p: p.stem)
def test_schema_is_a_valid_strict_json_schema(path: Path) -> None:
    schema = json.loads(path.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"][:3] == ["apiVersion", "kind", "metadata"]
    assert schema["properties"]["metadata"]["required"] == ["name"]
    assert not _loose_objects(schema)
    assert not [k for k in path.read_text().split('"')[1::2] if k in ("nullable", "description")]


def test_minimal_ray_service_validates() -> None:
    assert validate_custom(RAY_SERVICE) == []
    assert validate(RAY_SERVICE) == []


def test_misspelled_ray_service_field_fails_with_its_path() -> None:
    bad = copy.deepcopy(RAY_SERVICE)
    bad["spec"]["rayClusterConfig"]["enableInTreeAutoscalling"] = True
    errors = validate_custom(bad)
    assert len(errors) == 1
    assert errors[0].startswith("$.spec.rayClusterConfig.enableInTreeAutoscalling: unknown field")
    assert "enableInTreeAutoscaling" in errors[0]  # the right spelling is among the allowed fields


def test_misspelled_field_deep_in_the_pod_template_fails() -> None:
    bad = copy.deepcopy(RAY_SERVICE)
    bad["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "x"
    assert [e.split(":")[0] for e in validate_custom(bad)] == [
        "$.spec.rayClusterConfig.headGroupSpec.template.spec.containers[0].imagePullPolicyy"]


def test_top_level_is_pinned() -> None:
    no_name = copy.deepcopy(RAY_SERVICE)
    del no_name["metadata"]["name"]
    assert validate_custom(no_name) == ["$.metadata: 'name' is a required property"]
    typo = copy.deepcopy(RAY_SERVICE)
    typo["metadata"]["lables"] = typo["metadata"].pop("labels")
    assert [e.split(":")[0] for e in validate_custom(typo)] == ["$.metadata.lables"]
    typo["metadata"]["labels"] = {"replicas": 2}  # label values are strings
    assert "$.metadata.labels.replicas: 2 is not of type 'string'" in validate_custom(typo)


def test_wrong_type_fails() -> None:
    bad = copy.deepcopy(RAY_SERVICE)
    bad["spec"]["serveConfigV2"] = {"applications": []}  # KubeRay wants the Serve config as a YAML string
    assert [e.split(":")[0] for e in validate_custom(bad)] == ["$.spec.serveConfigV2"]


def test_minimal_scaled_object_and_service_monitor_validate() -> None:
    assert validate_custom(SCALED_OBJECT) == []
    assert validate_custom(SERVICE_MONITOR) == []


def test_misspelled_scaled_object_field_fails_with_its_path() -> None:
    bad = copy.deepcopy(SCALED_OBJECT)
    bad["spec"]["maxReplicaz"] = bad["spec"].pop("maxReplicaCount")
    errors = validate_custom(bad)
    assert len(errors) == 1 and errors[0].startswith("$.spec.maxReplicaz: unknown field"), errors


def test_go_regex_flags_work_in_python() -> None:
    rule: dict[str, Any] = {
        "apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "tessera"},
        "spec": {"groups": [{"name": "tessera", "partial_response_strategy": "WARN",  # CRD: ^(?i)(abort|warn)?$
                             "rules": [{"alert": "QueueDeep", "expr": "tessera_queue_depth > 100", "for": "5m"}]}]},
    }
    assert validate_custom(rule) == []
    rule["spec"]["groups"][0]["partial_response_strategy"] = "drop"
    assert [e.split(":")[0] for e in validate_custom(rule)] == ["$.spec.groups[0].partial_response_strategy"]


def test_free_form_objects_stay_free() -> None:
    ok = copy.deepcopy(SCALED_OBJECT)
    ok["spec"]["triggers"][0]["metadata"]["anyScalerKey"] = "whatever"  # trigger metadata: a string map
    assert validate_custom(ok) == []


def test_unknown_kind_is_a_clear_key_error() -> None:
    with pytest.raises(KeyError, match=r"no custom-resource schema for kind 'RayService' apiVersion 'ray.io/v1alpha1'"):
        validate_custom({**RAY_SERVICE, "apiVersion": "ray.io/v1alpha1"})
    with pytest.raises(UnknownKindError, match="validate_builtin"):
        validate_custom(DEPLOYMENT)


def test_builtin_kinds_validate_strictly() -> None:
    assert validate_builtin(DEPLOYMENT) == []
    assert validate(DEPLOYMENT) == []
    bad = copy.deepcopy(DEPLOYMENT)
    bad["spec"]["replicaz"] = 2
    errors = validate_builtin(bad)
    assert len(errors) == 1 and errors[0].startswith("$.spec: ") and "'replicaz' was unexpected" in errors[0]
    assert errors[0].endswith("(Kubernetes 1.34.0, 1.35.0)")
    with pytest.raises(UnknownKindError, match="validate_custom"):
        validate_builtin(RAY_SERVICE)


@pytest.mark.parametrize(("tool", "args", "version"), [
    ("helm", ["version"], "v4.1.4"),
    ("kubectl", ["version", "--client"], "v1.35.2"),
])
def test_setup_installed_the_k8s_tool(tool: str, args: list[str], version: str) -> None:
    exe = Path(sys.executable).with_name(tool)  # the venv's bin/ (sys.executable unresolved)
    assert exe.is_file(), f"{exe} missing: run make setup (scripts/k8s_tools.sh)"
    out = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=60, check=True).stdout
    assert version in out, out
