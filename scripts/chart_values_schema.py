"""Writes helm/tessera/values.schema.json, the chart's strict values schema (every object closed:
unknown keys are errors naming their path). Edit this, not the JSON: `python scripts/chart_values_schema.py`;
tests/k8s/test_chart.py checks the committed file is its output."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parents[1] / "helm/tessera/values.schema.json"


def obj(props: dict[str, Any], required: list[str] | None = None, desc: str | None = None) -> dict[str, Any]:
    o = {"type": "object", "additionalProperties": False, "properties": props}
    if required:
        o["required"] = required
    if desc:
        o["description"] = desc
    return o


def S(**k: Any) -> dict[str, Any]:  # one letter per JSON type keeps the tables readable
    return {"type": "string", **k}


def I(**k: Any) -> dict[str, Any]:  # noqa: E743
    return {"type": "integer", **k}


def N(**k: Any) -> dict[str, Any]:
    return {"type": "number", **k}


def ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/$defs/{name}"}


B = {"type": "boolean"}
quantity = {
    "anyOf": [
        {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?(m|k|Ki|Mi|Gi|Ti|Pi|M|G|T|P|E|Ei)?$"},
        {"type": "number", "minimum": 0},
    ]
}
defs = {
    "quantity": quantity,
    # A Kubernetes label selector ({} selects everything).
    "labelSelector": obj({
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {"type": "array", "items": obj(
            {"key": S(minLength=1), "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
             "values": {"type": "array", "items": S()}}, ["key", "operator"])},
    }),
    "resourceList": {
        "type": "object",
        "additionalProperties": False,
        "properties": {"cpu": ref("quantity"), "memory": ref("quantity"), "ephemeral-storage": ref("quantity")},
    },
    "resources": obj({"requests": ref("resourceList"), "limits": ref("resourceList")}, ["requests", "limits"]),
    "image": obj(
        {
            "repository": S(minLength=1),
            "tag": S(minLength=1),
            "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        },
        ["repository", "tag", "pullPolicy"],
    ),
    "nodeSelector": {"type": "object", "additionalProperties": {"type": "string"}},
    "tolerations": {
        "type": "array",
        "items": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "key": S(),
                "operator": {"enum": ["Exists", "Equal"]},
                "value": S(),
                "effect": {"enum": ["NoSchedule", "PreferNoSchedule", "NoExecute", ""]},
                "tolerationSeconds": I(),
            },
        },
    },
    "affinity": {"type": "object"},
    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    "port": I(minimum=1, maximum=65535),
    "app": obj(
        {
            "enabled": B,
            "gpus": I(minimum=0, maximum=16, description="GPUs per worker pod (one replica per GPU); 0 = CPU pool"),
            "minReplicas": I(minimum=0),
            "maxReplicas": I(minimum=1),
            "autoscaling": obj(
                {
                    "min_replicas": I(minimum=0),
                    "max_replicas": I(minimum=1),
                    "initial_replicas": I(minimum=0),
                    "target_ongoing_requests": N(exclusiveMinimum=0),
                    "upscale_delay_s": N(minimum=0),
                    "downscale_delay_s": N(minimum=0),
                    "look_back_period_s": N(minimum=0),
                    "metrics_interval_s": N(minimum=0),
                },
                ["min_replicas", "max_replicas"],
            ),
            "args": {
                "type": "object",
                "description": "merged into the app's args (the app's pydantic model validates them)",
            },
            "resources": ref("resources"),
            "nodeSelector": ref("nodeSelector"),
            "tolerations": ref("tolerations"),
        },
        ["enabled", "gpus", "minReplicas", "maxReplicas", "autoscaling", "args", "resources"],
    ),
}
# A GPU pool must say which nodes carry its GPUs.
defs["app"]["if"] = {"properties": {"gpus": {"minimum": 1}}, "required": ["gpus"]}
defs["app"]["then"] = {"required": ["nodeSelector"], "properties": {"nodeSelector": {"minProperties": 1}}}
limits = {"type": "object"}
schema = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Tessera chart values",
    "$defs": defs,
    **obj(
        {
            "image": obj(
                {
                    "gateway": ref("image"),
                    "worker": ref("image"),
                    "pullSecrets": {"type": "array", "items": S(minLength=1)},
                },
                ["gateway", "worker", "pullSecrets"],
            ),
            "gateway": obj(
                {
                    "replicas": I(minimum=1),
                    "port": ref("port"),
                    "metricsPort": ref("port"),
                    "service": obj(
                        {"type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]}, "headless": B},
                        ["type", "headless"],
                    ),
                    "limits": obj(
                        {
                            "text": obj(
                                {
                                    "max_prompt_chars": I(minimum=1),
                                    "max_tokens": I(minimum=1),
                                    "models": {"type": "array", "items": S(minLength=1), "minItems": 1},
                                }
                            ),
                            "images": obj(
                                {
                                    "max_prompt_chars": I(minimum=1),
                                    "max_image_bytes": I(minimum=1),
                                    "min_side": I(minimum=1),
                                    "max_side": I(minimum=1),
                                    "max_steps": I(minimum=1),
                                    "models": {"type": "array", "items": S(minLength=1), "minItems": 1},
                                }
                            ),
                            "understanding": obj(
                                {
                                    "max_question_chars": I(minimum=1),
                                    "max_tokens": I(minimum=1),
                                    "models": {"type": "array", "items": S(minLength=1), "minItems": 1},
                                }
                            ),
                        }
                    ),
                    "apiKeys": obj(
                        {
                            "existingSecret": S(),
                            "keys": {
                                "type": "array",
                                "items": obj(
                                    {
                                        "id": S(minLength=1),
                                        "sha256": S(pattern="^[0-9a-f]{64}$"),
                                        "rate_per_s": N(exclusiveMinimum=0),
                                        "burst": I(minimum=1),
                                    },
                                    ["id", "sha256"],
                                ),
                            },
                        },
                        ["existingSecret", "keys"],
                    ),
                    "rateLimit": obj(
                        {"default_rate_per_s": N(exclusiveMinimum=0), "default_burst": I(minimum=1)},
                        ["default_rate_per_s", "default_burst"],
                    ),
                    "resources": ref("resources"),
                    "pdb": obj({"enabled": B, "minAvailable": I(minimum=0)}, ["enabled", "minAvailable"]),
                    "autoscaling": obj(
                        {
                            "enabled": B,
                            "minReplicas": I(minimum=1),
                            "maxReplicas": I(minimum=1),
                            "targetCPUUtilizationPercentage": I(minimum=1, maximum=100),
                        },
                        ["enabled", "minReplicas", "maxReplicas", "targetCPUUtilizationPercentage"],
                    ),
                    "nodeSelector": ref("nodeSelector"),
                    "tolerations": ref("tolerations"),
                    "affinity": ref("affinity"),
                },
                ["replicas", "port", "metricsPort", "service", "limits", "apiKeys", "rateLimit", "resources", "pdb"],
            ),
            "dispatcher": obj(
                {
                    "replicas": I(minimum=1),
                    "config": obj(
                        {
                            "max_in_flight": I(minimum=1),
                            "claim_idle_ms": I(minimum=100),
                            "heartbeat_ms": I(minimum=10),
                            "max_attempts": I(minimum=1),
                            "retry_backoff_ms": I(minimum=0),
                            "chunk_linger_ms": N(minimum=0),
                        }
                    ),
                    "metricsPort": ref("port"),
                    "terminationGracePeriodSeconds": I(minimum=1),
                    "autoscaling": obj(
                        {
                            "enabled": B,
                            "minReplicas": I(minimum=0),
                            "maxReplicas": I(minimum=1),
                            "prometheusAddress": S(pattern="^https?://"),
                            "queueDepthPerReplica": N(exclusiveMinimum=0),
                            "oldestJobAgeSeconds": N(exclusiveMinimum=0),
                            "cooldownPeriod": I(minimum=0),
                        },
                        [
                            "enabled",
                            "minReplicas",
                            "maxReplicas",
                            "prometheusAddress",
                            "queueDepthPerReplica",
                            "oldestJobAgeSeconds",
                            "cooldownPeriod",
                        ],
                    ),
                    "resources": ref("resources"),
                    "nodeSelector": ref("nodeSelector"),
                    "tolerations": ref("tolerations"),
                    "affinity": ref("affinity"),
                },
                ["replicas", "config", "metricsPort", "terminationGracePeriodSeconds", "resources"],
            ),
            "redis": obj(
                {
                    "embedded": obj(
                        {
                            "enabled": B,
                            "image": ref("image"),
                            "storage": obj({"size": ref("quantity"), "storageClass": S()}, ["size", "storageClass"]),
                            "resources": ref("resources"),
                        },
                        ["enabled", "image", "storage", "resources"],
                    ),
                    "passwordSecret": S(),
                    "external": obj({"urlSecret": S()}, ["urlSecret"]),
                    "keyPrefix": S(minLength=1),
                    "jobTtlSeconds": I(minimum=60),
                },
                ["embedded", "passwordSecret", "external", "keyPrefix", "jobTtlSeconds"],
            ),
            "monitoring": obj(
                {
                    "serviceMonitor": obj(
                        {"enabled": B, "interval": S(pattern="^[0-9]+(s|m)$"), "labels": ref("labels")},
                        ["enabled", "interval", "labels"],
                    ),
                    "podMonitor": obj(
                        {"enabled": B, "interval": S(pattern="^[0-9]+(s|m)$"), "labels": ref("labels")},
                        ["enabled", "interval", "labels"],
                    ),
                    "rules": obj(
                        {
                            "enabled": B,
                            "labels": ref("labels"),
                            "oldestJobAgeSeconds": N(exclusiveMinimum=0),
                            "errorRatio": N(exclusiveMinimum=0, maximum=1),
                        },
                        ["enabled", "labels", "oldestJobAgeSeconds", "errorRatio"],
                    ),
                    "dashboard": obj({"enabled": B, "labels": ref("labels")}, ["enabled", "labels"]),
                },
                ["serviceMonitor", "podMonitor", "rules", "dashboard"],
            ),
            "tests": obj({"apiKeySecret": S()}, ["apiKeySecret"]),
            "workers": obj(
                {
                    "rayVersion": S(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+$"),
                    "enableInTreeAutoscaling": B,
                    "tokenSecret": S(),
                    "head": obj(
                        {
                            "resources": ref("resources"),
                            "nodeSelector": ref("nodeSelector"),
                            "tolerations": ref("tolerations"),
                        },
                        ["resources"],
                    ),
                    "apps": obj(
                        {"text": ref("app"), "image": ref("app"), "understanding": ref("app")},
                        ["text", "image", "understanding"],
                    ),
                },
                ["rayVersion", "enableInTreeAutoscaling", "tokenSecret", "head", "apps"],
            ),
            "networkPolicy": obj(
                {"enabled": B, "operatorNamespaceSelector": ref("labelSelector"),
                 "metricsNamespaceSelector": ref("labelSelector")},
                ["enabled", "operatorNamespaceSelector", "metricsNamespaceSelector"],
            ),
        },
        ["image", "gateway", "dispatcher", "redis", "workers"],
    ),
}


def render() -> str:
    return json.dumps(schema, indent=2) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        sys.exit(0 if OUT.read_text() == render() else f"{OUT} is stale: run python scripts/chart_values_schema.py")
    OUT.write_text(render())
