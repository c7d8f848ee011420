"""Config-file helpers shared by the services' config loaders (gateway, dispatcher)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any


def check_keys(cls: type, d: object, path: str = "", what: str = "config") -> Mapping[str, Any]:
    """`d` if it is a mapping whose keys are all fields of the dataclass `cls`; else ValueError naming
    each unknown key by its path in the file (`dispatcher.max_infligth`), so a typo is not a silent default."""
    if not isinstance(d, Mapping):
        raise ValueError(f"{what} {path or 'file'}: expected a mapping, got {type(d).__name__}")
    if unknown := sorted(set(d) - {f.name for f in fields(cls)}):
        raise ValueError(f"unknown {what} keys: {[f'{path}.{k}' if path else k for k in unknown]}")
    return d
