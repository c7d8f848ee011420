"""Strict JSON schemas for the custom resources the Helm chart renders, derived from the upstream CRDs:
`python scripts/crd_schemas.py [--crds ../shared/k8s-crds] [--out tests/k8s/schemas] [--check]`.

For each kind in KINDS and each served, non-deprecated version of its CRD, the CRD's openAPIV3Schema
becomes tests/k8s/schemas/<group>/<kind>_<version>.json (JSON Schema 2020-12), made strict:
- `"additionalProperties": false` on every object schema with `properties` and neither
  `additionalProperties` nor `x-kubernetes-preserve-unknown-fields: true` (free-form objects stay free;
  schemas inside anyOf/allOf/oneOf/not are left alone: they constrain values, the parent owns the fields);
- top level: `apiVersion` and `kind` required and fixed (`const`), `metadata` required and a strict
  ObjectMeta (`name` required), where the CRDs only say `metadata: {type: object}`;
- OpenAPI to JSON Schema: `nullable: true` becomes a `"null"` type; `x-kubernetes-int-or-string: true`
  becomes `anyOf: [integer, string]` where the CRD lacks it; `x-kubernetes-list-type: set` becomes
  `uniqueItems: true`; a Go regex's global flags move to the pattern's start, where Python's re wants
  them. Other x-kubernetes-* keys (list/map merge types) and `description` are dropped;
  `x-kubernetes-validations` (CEL rules: not evaluated here) and the two markers above are kept.
A null anywhere else fails the check, though the API server would drop it: in rendered output it is a
templating slip. Output is deterministic (sorted keys, fixed indent), so a re-run gives the same bytes.
--check regenerates into a temporary directory and fails if the committed files differ.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CRDS = ROOT.parent / "shared" / "k8s-crds"
DEFAULT_OUT = ROOT / "tests" / "k8s" / "schemas"
DRAFT = "https://json-schema.org/draft/2020-12/schema"

# (group, kind): CRD file, upstream project, commit, path upstream. Every file is Apache-2.0.
KINDS: dict[tuple[str, str], tuple[str, str, str, str]] = {
    ("ray.io", "RayService"): (
        "ray.io_rayservices.yaml", "ray-project/kuberay (v1.7.0 era)", "feeaf72f", "ray-operator/config/crd/bases/"),
    ("keda.sh", "ScaledObject"): (
        "keda.sh_scaledobjects.yaml", "kedacore/keda", "8b4f083c", "config/crd/bases/"),
    ("monitoring.coreos.com", "ServiceMonitor"): (
        "monitoring.coreos.com_servicemonitors.yaml", "prometheus-operator/prometheus-operator", "6adcebc5",
        "example/prometheus-operator-crd-full/"),
    ("monitoring.coreos.com", "PodMonitor"): (
        "monitoring.coreos.com_podmonitors.yaml", "prometheus-operator/prometheus-operator", "6adcebc5",
        "example/prometheus-operator-crd-full/"),
    ("monitoring.coreos.com", "PrometheusRule"): (
        "monitoring.coreos.com_prometheusrules.yaml", "prometheus-operator/prometheus-operator", "6adcebc5",
        "example/prometheus-operator-crd-full/"),
    ("serving.kserve.io", "InferenceService"): (
        "serving.kserve.io_inferenceservices.yaml", "kserve/kserve (python/VERSION 0.20.0)", "aaac4e29",
        "config/crd/full/"),
    ("serving.kserve.io", "ServingRuntime"): (
        "serving.kserve.io_servingruntimes.yaml", "kserve/kserve (python/VERSION 0.20.0)", "aaac4e29",
        "config/crd/full/"),
}
LICENSE = "Apache-2.0"
REGENERATE = "python scripts/crd_schemas.py --crds ../shared/k8s-crds  (or: make crd-schemas)"

KEEP_EXTENSIONS = {"x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields", "x-kubernetes-validations"}
DROP = {"description", "nullable"}
SUBSCHEMA_LISTS = ("allOf", "anyOf", "oneOf")
INT_OR_STRING = [{"type": "integer"}, {"type": "string"}]

_STR = {"type": "string"}
_STR_MAP = {"type": "object", "additionalProperties": _STR}
# metav1.ObjectMeta (k8s.io/apimachinery), strict; the CRDs leave metadata to the API server.
OBJECT_META: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name"],
    "properties": {
        "annotations": _STR_MAP,
        "creationTimestamp": {"type": "string", "format": "date-time"},
        "deletionGracePeriodSeconds": {"type": "integer", "format": "int64"},
        "deletionTimestamp": {"type": "string", "format": "date-time"},
        "finalizers": {"type": "array", "items": _STR, "uniqueItems": True},
        "generateName": _STR,
        "generation": {"type": "integer", "format": "int64"},
        "labels": _STR_MAP,
        "managedFields": {"type": "array", "items": {"type": "object"}},
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "namespace": {"type": "string", "minLength": 1, "maxLength": 63},
        "ownerReferences": {"type": "array", "items": {
            "type": "object",
            "additionalProperties": False,
            "required": ["apiVersion", "kind", "name", "uid"],
            "properties": {"apiVersion": _STR, "blockOwnerDeletion": {"type": "boolean"},
                           "controller": {"type": "boolean"}, "kind": _STR, "name": _STR, "uid": _STR},
        }},
        "resourceVersion": _STR,
        "selfLink": _STR,
        "uid": _STR,
    },
}


def _python_pattern(pattern: str) -> str:
    """A CRD's (Go RE2) pattern as one Python's re accepts: RE2 takes global flags anywhere, Python only at
    the start (`^(?i)x` becomes `(?i)^x`, the same match). Fail on any other pattern Python rejects."""
    fixed = re.sub(r"^\^(\(\?[a-zA-Z]+\))", r"\1^", pattern)
    try:
        re.compile(fixed)
    except re.error as e:
        raise SystemExit(f"pattern {pattern!r}: Python's re rejects it ({e}); teach _python_pattern") from None
    return fixed


def _convert(node: dict[str, Any], in_junctor: bool = False) -> dict[str, Any]:
    """One OpenAPI (structural) schema node as strict JSON Schema, recursively."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in DROP or (key.startswith("x-kubernetes-") and key not in KEEP_EXTENSIONS):
            continue
        if key == "properties":
            out[key] = {name: _convert(sub, in_junctor) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _convert(value, in_junctor or key == "not")
        elif key in SUBSCHEMA_LISTS:
            out[key] = [_convert(sub, True) for sub in value]
        elif key == "pattern":
            out[key] = _python_pattern(value)
        else:
            out[key] = value
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
    if node.get("x-kubernetes-int-or-string") and "anyOf" not in out and "type" not in out:
        out["anyOf"] = INT_OR_STRING
    if node.get("x-kubernetes-list-type") == "set":
        out["uniqueItems"] = True
    free = "additionalProperties" in node or node.get("x-kubernetes-preserve-unknown-fields") is True
    if "properties" in node and not free and not in_junctor:
        out["additionalProperties"] = False
    return out


def build_schema(crd: dict[str, Any], version: dict[str, Any], source: str) -> dict[str, Any]:
    group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
    api_version = f"{group}/{version['name']}"
    schema = _convert(version["schema"]["openAPIV3Schema"])
    props = schema.setdefault("properties", {})
    props["apiVersion"] = {"type": "string", "const": api_version}
    props["kind"] = {"type": "string", "const": kind}
    props["metadata"] = OBJECT_META
    schema["type"] = "object"
    schema["additionalProperties"] = False
    schema["required"] = ["apiVersion", "kind", "metadata",
                          *[r for r in schema.get("required", []) if r not in ("apiVersion", "kind", "metadata")]]
    schema["$schema"] = DRAFT
    schema["$comment"] = (f"{kind} {api_version}: generated by scripts/crd_schemas.py from {source} "
                          f"({LICENSE}); strict (additionalProperties: false). Do not edit: regenerate.")
    return schema


def _load_crd(path: Path) -> dict[str, Any]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    docs = [d for d in yaml.load_all(path.read_text(), Loader=loader) if d]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if len(crds) != 1:
        raise SystemExit(f"{path}: expected one CustomResourceDefinition, found {len(crds)}")
    return crds[0]


def _dump(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def generate(crds_dir: Path, out: Path, include_deprecated: bool = False) -> list[Path]:
    """Write every schema and SOURCES.md under `out`; return the paths written."""
    written: list[Path] = []
    rows: list[str] = []
    for (group, kind), (filename, project, commit, upstream) in sorted(KINDS.items()):
        crd = _load_crd(crds_dir / filename)
        if (crd["spec"]["group"], crd["spec"]["names"]["kind"]) != (group, kind):
            raise SystemExit(f"{filename}: defines {crd['spec']['names']['kind']}.{crd['spec']['group']}, "
                             f"not {kind}.{group}")
        source = f"{project} @ {commit}, {upstream}{filename}"
        versions = [v for v in crd["spec"]["versions"]
                    if v.get("served") and (include_deprecated or not v.get("deprecated"))]
        if not versions:
            raise SystemExit(f"{filename}: no served version of {kind}")
        for version in sorted(versions, key=lambda v: v["name"]):
            rel = Path(group) / f"{kind.lower()}_{version['name']}.json"
            path = out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(_dump(build_schema(crd, version, source)))
            written.append(path)
            rows.append(f"| `{rel.as_posix()}` | {kind} {group}/{version['name']} | {project} | {commit} | "
                        f"`{upstream}{filename}` | {LICENSE} |")
    sources = out / "SOURCES.md"
    sources.write_text("\n".join([
        "# Strict JSON schemas of the custom resources the Helm chart renders",
        "",
        "Generated by `scripts/crd_schemas.py` (its docstring says how the CRD's `openAPIV3Schema` is made",
        "strict) from the upstream CustomResourceDefinitions, unmodified copies of which lie in",
        "`../shared/k8s-crds/` beside this checkout. Do not edit these files by hand. Regenerate with:",
        "",
        f"    {REGENERATE}",
        "",
        "`tests/k8s/test_schemas.py` checks that the committed files are what the script makes from those",
        "CRDs. Only served, non-deprecated versions are written (ray.io/v1alpha1 RayService is deprecated).",
        "",
        "| file | kind | upstream project | commit | path upstream | licence |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
        f"All upstream files are {LICENSE} licensed; the schemas here are derived works of them.",
        "",
    ]))
    written.append(sources)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", type=Path, default=DEFAULT_CRDS, help="directory of the upstream CRD YAMLs")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the schemas go")
    parser.add_argument("--include-deprecated", action="store_true", help="also write deprecated served versions")
    parser.add_argument("--check", action="store_true", help="fail if the files under --out are not up to date")
    args = parser.parse_args(argv)
    if not args.crds.is_dir():
        raise SystemExit(f"no CRD directory at {args.crds}")
    if not args.check:
        for stale in [*args.out.glob("*/*.json"), args.out / "SOURCES.md"]:
            stale.unlink(missing_ok=True)  # a kind or version dropped from KINDS leaves no file behind
        for path in generate(args.crds, args.out, args.include_deprecated):
            print(f"{path.relative_to(args.out)}  {path.stat().st_size} bytes")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = [p.relative_to(tmp) for p in generate(args.crds, Path(tmp), args.include_deprecated)]
        committed = sorted(p.relative_to(args.out) for p in args.out.rglob("*") if p.is_file())
        stale = sorted(set(committed) ^ set(fresh))
        stale += [p for p in fresh if p in committed and not filecmp.cmp(Path(tmp) / p, args.out / p, shallow=False)]
    if stale:
        print("out of date: " + ", ".join(map(str, stale)) + f"\nrun: {REGENERATE}", file=sys.stderr)
        return 1
    print(f"{len(fresh)} files up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
