"""Where a LoRA adapter's base model is.

A PEFT adapter names its base in `adapter_config.json` `base_model_name_or_path`. The published D2F
adapters name a hub id (`GSAI-ML/LLaDA-8B-Instruct`) or a path on their author's machine; the embedded
checkpoints name a path relative to the adapter (`../arith-dream-teacher`). Nothing is downloaded:
`resolve_base` only finds a base that is already on disk, in this order:

1. the explicit `base` (the `base_dir` argument of `load_model`, the text worker's `model.base_model_dir`);
2. `base_model_name_or_path` as an absolute path;
3. as a path relative to the adapter directory;
4. for a hub id `org/name`: `$TESSERA_MODEL_ROOT/org/name` (several roots may be joined with `os.pathsep`);
5. for a hub id: the Hugging Face cache (`$HF_HUB_CACHE`, else `$HF_HOME/hub`, else
   `$XDG_CACHE_HOME/huggingface/hub` or `~/.cache/huggingface/hub`), layout
   `models--org--name/snapshots/<revision>/`: the revision `refs/main` names when present, else the
   newest snapshot.

A candidate counts when it is a directory holding `config.json`. When none does, FileNotFoundError
names the adapter, the base name and every place looked.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

MODEL_ROOT_ENV = "TESSERA_MODEL_ROOT"
# A hub repo id: exactly one "/", names of letters, digits, "-", "_" and "." (not starting with "." or "-").
_HUB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*/[A-Za-z0-9_][A-Za-z0-9_.-]*")


def is_model_dir(p: Path) -> bool:
    return p.is_dir() and (p / "config.json").is_file()


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache directory, as huggingface_hub computes it from the environment."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):  # the second is the legacy spelling
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "huggingface" / "hub"


def hf_snapshot(cache: Path, repo_id: str) -> tuple[Path | None, str]:
    """(the snapshot directory of `repo_id` in `cache`, or None; what was looked at, for messages)."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshots = repo / "snapshots"
    ref = repo / "refs" / "main"
    if ref.is_file():
        rev = ref.read_text().strip()
        if is_model_dir(snapshots / rev):
            return snapshots / rev, f"{snapshots / rev} (refs/main)"
    found = [p for p in snapshots.iterdir() if is_model_dir(p)] if snapshots.is_dir() else []
    if found:
        # No usable refs/main (a cache copied without refs, or a partial download): the newest snapshot.
        return max(found, key=lambda p: p.stat().st_mtime), f"{snapshots}/*"
    return None, f"{snapshots}/<revision>"


def base_name(adapter_dir: Path) -> str:
    """The adapter's `base_model_name_or_path` ("" when absent)."""
    acfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    return str(acfg.get("base_model_name_or_path") or "")


def resolve_base(adapter_dir: str | Path, base: str | Path | None = None) -> Path:
    """The base model directory of the adapter in `adapter_dir` (see the module docstring)."""
    adapter_dir = Path(adapter_dir)
    if base is not None and str(base):
        explicit = Path(base).expanduser()
        if is_model_dir(explicit):
            return explicit.resolve()
        # An explicit base that is wrong is an error, not a hint to look elsewhere.
        raise FileNotFoundError(f"adapter {adapter_dir}: the base model given explicitly, {explicit}, "
                                "is not a model directory (no config.json there)")
    name = base_name(adapter_dir)
    if not name:
        raise FileNotFoundError(f"adapter {adapter_dir}: adapter_config.json names no base_model_name_or_path; "
                                "pass the base model directory explicitly (load_model(base_dir=...), "
                                "the text worker's model.base_model_dir)")
    looked: list[str] = []
    as_path = Path(name).expanduser()
    if as_path.is_absolute():
        if is_model_dir(as_path):
            return as_path.resolve()
        looked.append(f"the absolute path {as_path}")
    else:
        rel = adapter_dir / as_path
        if is_model_dir(rel):
            return rel.resolve()
        looked.append(f"relative to the adapter: {rel}")
    if _HUB_ID.fullmatch(name):
        roots = [r for r in os.environ.get(MODEL_ROOT_ENV, "").split(os.pathsep) if r]
        for root in roots:
            p = Path(root).expanduser() / name
            if is_model_dir(p):
                return p.resolve()
            looked.append(f"${MODEL_ROOT_ENV}: {p}")
        if not roots:
            looked.append(f"${MODEL_ROOT_ENV}/{name} (${MODEL_ROOT_ENV} is not set)")
        snap, where = hf_snapshot(hf_hub_cache(), name)
        if snap is not None:
            return snap.resolve()
        looked.append(f"the Hugging Face cache: {where}")
    raise FileNotFoundError(
        f"adapter {adapter_dir}: base model {name!r} not found; looked for a directory with config.json at: "
        + "; ".join(looked)
        + f". Pass the base model directory explicitly (load_model(base_dir=...), the text worker's "
        f"model.base_model_dir) or place it under ${MODEL_ROOT_ENV}/<org>/<name>.")
