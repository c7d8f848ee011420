"""Offline validation of rendered Kubernetes objects, for the Helm chart's tests.

- validate_custom(obj): custom resources (RayService, ScaledObject, ServiceMonitor, ...) against the strict
  JSON schemas in tests/k8s/schemas/ (made from the upstream CRDs by scripts/crd_schemas.py).
- validate_builtin(obj): built-in kinds (Deployment, Service, ConfigMap, ...) with kubernetes-validate's
  strict schemas, for each Kubernetes version named.
- validate(obj): whichever of the two fits the object's apiVersion and kind.
Each returns a list of messages, `"<JSON path>: <what is wrong>"`, empty when the object is valid.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate

SCHEMAS = Path(__file__).resolve().parent / "schemas"
K8S_VERSIONS = ("1.34.0", "1.35.0")


class UnknownKindError(KeyError):
    """No schema for an object's apiVersion and kind."""

    def __str__(self) -> str:  # KeyError's own str() would quote the message
        return str(self.args[0])


def _schema_path(api_version: str, kind: str) -> Path:
    group, _, version = api_version.rpartition("/")
    return SCHEMAS / group / f"{kind.lower()}_{version}.json"


def known_custom_kinds() -> list[tuple[str, str]]:
    """(apiVersion, kind) of every committed custom-resource schema."""
    out = []
    for path in sorted(SCHEMAS.glob("*/*.json")):
        props = json.loads(path.read_text())["properties"]
        out.append((props["apiVersion"]["const"], props["kind"]["const"]))
    return out


def is_custom(obj: Mapping[str, Any]) -> bool:
    api_version, kind = str(obj.get("apiVersion", "")), str(obj.get("kind", ""))
    return "/" in api_version and bool(kind) and _schema_path(api_version, kind).is_file()


@cache
def _validator(api_version: str, kind: str) -> jsonschema.protocols.Validator:
    path = _schema_path(api_version, kind)
    if not ("/" in api_version and kind and path.is_file()):
        known = ", ".join(f"{k} {a}" for a, k in known_custom_kinds())
        raise UnknownKindError(f"no custom-resource schema for kind {kind!r} apiVersion {api_version!r} "
                               f"(looked for {path.relative_to(SCHEMAS.parent)}); known: {known}. "
                               "Built-in kinds go to validate_builtin; a new CRD kind to scripts/crd_schemas.py.")
    schema = json.loads(path.read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema)


def _messages(error: jsonschema.ValidationError) -> list[str]:
    path = error.json_path
    if error.validator == "additionalProperties" and error.validator_value is False \
            and isinstance(error.instance, dict):
        allowed = set(error.schema.get("properties", {}))
        extra = sorted(k for k in error.instance if k not in allowed)
        if extra:  # name the misspelled field itself, not only its parent
            return [f"{path}.{k}: unknown field (allowed here: {', '.join(sorted(allowed))})" for k in extra]
    return [f"{path}: {error.message}"]


def validate_custom(obj: Mapping[str, Any]) -> list[str]:
    """Check a custom resource against its strict schema; raise UnknownKindError (a KeyError) when there
    is no schema for its apiVersion and kind."""
    validator = _validator(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
    errors = sorted(validator.iter_errors(obj), key=lambda e: (e.json_path, e.message))
    return [m for e in errors for m in _messages(e)]


def validate_builtin(obj: Mapping[str, Any], versions: Iterable[str] = K8S_VERSIONS) -> list[str]:
    """Check a built-in kind with kubernetes-validate (strict: unknown fields fail) against each version.
    kubernetes-validate reports the first error per version; the same message for several versions is
    given once, with the versions it holds for. Raise UnknownKindError when a version has no schema."""
    found: dict[str, list[str]] = {}
    for version in versions:
        try:
            kubernetes_validate.validate(dict(obj), version, strict=True)
        except kubernetes_validate.ValidationError as e:
            found.setdefault(f"{e.json_path}: {e.message}", []).append(version)
        except kubernetes_validate.SchemaNotFoundError as e:
            raise UnknownKindError(f"{e.message}: a custom resource? use validate_custom") from None
    return [f"{msg} (Kubernetes {', '.join(vs)})" for msg, vs in found.items()]


def validate(obj: Mapping[str, Any], versions: Iterable[str] = K8S_VERSIONS) -> list[str]:
    """validate_custom for the kinds with a committed schema, validate_builtin for the rest."""
    return validate_custom(obj) if is_custom(obj) else validate_builtin(obj, versions)
