"""The Serve config file of the worker apps: load, override, validate.

The file (serve_config.yaml) is Ray Serve's own format, so `serve run` takes it as it is; this module
adds what Serve leaves out. Ray's schema (`ServeDeploySchema`) accepts unknown keys for forward
compatibility, so a typo such as `num_gpu` would be dropped silently and the replica would get no GPU:
here every unknown key is an error naming its path. Each app's `args` are validated with its
builder's pydantic model, and what spans args and deployments is checked before anything starts (a
cuda model needs `num_gpus`, a batch cannot be larger than `max_ongoing_requests`, the gRPC proxy
must serve the app's service).

`configure()` applies overrides (ports, tiny test models, other checkpoints) to the file's mapping
and validates the result, so `make run`, `python -m services.workers` and the tests all deploy
through the same checks as the file itself.
"""

from __future__ import annotations

import copy
import inspect
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError
from ray._common.utils import import_attr
from ray.serve.schema import ServeApplicationSchema, ServeDeploySchema

from services.workers.config import AppArgs, ConfigError, format_errors
from services.workers.family import CONTROL_SERVICER, Family

DEFAULT_PATH = Path(__file__).with_name("serve_config.yaml")
SERVE_DEFAULT_MAX_ONGOING = 5  # Serve's default when a deployment leaves max_ongoing_requests out


def read(path: str | Path | None = None) -> dict[str, Any]:
    """The file's mapping, unvalidated (None = the shipped serve_config.yaml)."""
    path = Path(path or DEFAULT_PATH)
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with `applications:`, got {type(data).__name__}")
    return data


def load(path: str | Path | None = None) -> ServeDeploySchema:
    """The file, validated; errors name the file and each bad key's path."""
    try:
        return validate(read(path))
    except ConfigError as e:
        raise ConfigError(f"{path or DEFAULT_PATH}: {e}") from None


def validate(data: Mapping[str, Any]) -> ServeDeploySchema:
    unknown = _unknown_keys(data, ServeDeploySchema, "")
    if unknown:
        raise ConfigError("; ".join(f"{k}: unknown key" for k in unknown))
    try:
        schema = ServeDeploySchema.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_errors(e)) from None
    for i, app in enumerate(schema.applications):
        family = family_of(app)
        if family is not None:
            _check_app(schema, i, app, family)
    return schema


def family_of(app: ServeApplicationSchema | Mapping[str, Any]) -> Family | None:
    """The family whose builder the app's `import_path` names (None: an app that is not a Tessera worker)."""
    name, path = (app.name, app.import_path) if isinstance(app, ServeApplicationSchema) else (
        app.get("name"), app.get("import_path", ""))
    try:
        builder = import_attr(path)
    except (ImportError, AttributeError, ValueError) as e:
        raise ConfigError(f"applications[{name}].import_path: cannot import {path!r}: {e}") from None
    return getattr(builder, "family", None)


def app_args(schema: ServeDeploySchema, name: str) -> AppArgs:
    """The validated args of app `name`."""
    app = _app(schema, name)
    family = family_of(app)
    if family is None:
        raise ConfigError(f"applications[{name}] is not a Tessera worker app ({app.import_path})")
    return family.args.load(app.args, f"applications[{name}].args")


def entry_args(app: Mapping[str, Any], overrides: Mapping[str, Any] | None = None) -> AppArgs:
    """The validated args of one raw app entry, `overrides` merged key by key: for a front other than
    Serve's (the KServe model server), where the entry's `deployments` do not apply."""
    family = family_of(app)
    if family is None:
        raise ConfigError(f"applications[{app.get('name')}] is not a Tessera worker app ({app.get('import_path')})")
    return family.args.load(_merge(app.get("args") or {}, overrides or {}), f"applications[{app.get('name')}].args")


def configure(data: Mapping[str, Any] | None = None, *, only: Iterable[str] | None = None,
              args: Mapping[str, Mapping[str, Any]] | None = None,
              deployments: Mapping[str, Mapping[str, Any]] | None = None,
              grpc_port: int | None = None, http_port: int | None = None) -> ServeDeploySchema:
    """The file's mapping (None = the shipped file) with overrides, validated.

    only: keep these apps, in this order. args: per app, merged key by key into its `args`.
    deployments: per app, merged into its (single) deployment entry. Ports replace the proxies'.
    """
    data = copy.deepcopy(dict(data if data is not None else read()))
    apps = {a.get("name"): a for a in data.get("applications") or []}
    if only is not None:
        names = list(only)
        missing = [n for n in names if n not in apps]
        if missing:
            raise ConfigError(f"no application(s) {missing} in the config; it has {sorted(apps)}")
        data["applications"] = [apps[n] for n in names]
    for name, updates in (args or {}).items():
        app = _entry(apps, name)
        app["args"] = _merge(app.get("args") or {}, updates)
    for name, updates in (deployments or {}).items():
        app = _entry(apps, name)
        entries = app.setdefault("deployments", [])
        if not entries:
            entries.append({"name": family_deployment(app)})
        entries[0].update(updates)
    if grpc_port is not None:
        data.setdefault("grpc_options", {})["port"] = grpc_port
    if http_port is not None:
        data.setdefault("http_options", {})["port"] = http_port
    return validate(data)


def family_deployment(app: Mapping[str, Any]) -> str:
    family = family_of(app)
    if family is None:
        raise ConfigError(f"applications[{app['name']}]: not a Tessera worker app, give its deployments by name")
    return family.deployment


# --- checks -----------------------------------------------------------------------------------------

def _check_app(schema: ServeDeploySchema, i: int, app: ServeApplicationSchema, family: Family) -> None:
    where = f"applications[{i}]"
    args = family.args.load(app.args, f"{where}.args")
    if app.route_prefix is None:
        raise ConfigError(f"{where}.route_prefix: the gRPC proxy only finds apps that have one, e.g. /{app.name}")
    served = set(schema.grpc_options.grpc_servicer_functions)
    missing = [s for s in (family.servicer, CONTROL_SERVICER) if s not in served]
    if missing:
        raise ConfigError(f"grpc_options.grpc_servicer_functions: the {app.name} app needs {missing}; without them "
                          "its RPCs answer UNIMPLEMENTED")
    by_name = {d.name: d for d in app.deployments}
    strays = sorted(set(by_name) - {family.deployment})
    if strays:
        raise ConfigError(f"{where}.deployments: {strays} not in the app; its deployment is {family.deployment!r}")
    dep = by_name.get(family.deployment)
    fields = dep.model_dump(exclude_unset=True) if dep is not None else {}
    gpus = (fields.get("ray_actor_options") or {}).get("num_gpus", 0)
    device = args.model.device
    if device.startswith("cuda") and not gpus:
        raise ConfigError(f"{where}.deployments[{family.deployment}].ray_actor_options.num_gpus: the model runs on "
                          f"{device!r}, but without num_gpus > 0 Ray hides every GPU from the replica")
    batching = getattr(args, "batching", None)
    ongoing = fields.get("max_ongoing_requests", SERVE_DEFAULT_MAX_ONGOING)
    if batching is not None and batching.max_batch_size > ongoing:
        raise ConfigError(f"{where}.deployments[{family.deployment}].max_ongoing_requests: {ongoing} < "
                          f"args.batching.max_batch_size {batching.max_batch_size}, so batches could never fill")


def _unknown_keys(data: Any, model: type[BaseModel], path: str) -> list[str]:
    """Keys of `data` that `model` (and its nested models) do not have, as dotted paths."""
    if not isinstance(data, Mapping):
        return []
    fields = model.model_fields
    names = {f.alias or n: n for n, f in fields.items()} | {n: n for n in fields}
    out: list[str] = []
    for key, value in data.items():
        if key not in names:
            out.append(f"{path}{key}")
            continue
        sub = _model_in(fields[names[key]].annotation)
        if sub is None:
            continue  # a plain value or a free-form dict (args, user_config, runtime_env)
        if isinstance(value, list):
            for j, item in enumerate(value):
                out += _unknown_keys(item, sub, f"{path}{key}[{j}].")
        else:
            out += _unknown_keys(value, sub, f"{path}{key}.")
    return out


def _model_in(tp: Any) -> type[BaseModel] | None:
    if inspect.isclass(tp) and issubclass(tp, BaseModel):
        return tp
    for arg in typing.get_args(tp):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _merge(base: Mapping[str, Any], updates: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in updates.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out


def _entry(apps: Mapping[str, dict[str, Any]], name: str) -> dict[str, Any]:
    if name not in apps:
        raise ConfigError(f"no application {name!r} in the config; it has {sorted(apps)}")
    return apps[name]


def _app(schema: ServeDeploySchema, name: str) -> ServeApplicationSchema:
    for app in schema.applications:
        if app.name == name:
            return app
    raise ConfigError(f"no application {name!r} in the config; it has {[a.name for a in schema.applications]}")
