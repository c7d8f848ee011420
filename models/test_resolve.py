"""resolve_base: every branch of the search for an adapter's base model, and the message when none hits."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from models.resolve import MODEL_ROOT_ENV, hf_hub_cache, resolve_base

REPO = Path(__file__).resolve().parents[1]
HUB_ID = "GSAI-ML/LLaDA-8B-Instruct"


def _model(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text("{}")
    return d


def _adapter(d: Path, base: str | None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    acfg = {"peft_type": "LORA", "r": 4, "lora_alpha": 8}
    if base is not None:
        acfg["base_model_name_or_path"] = base
    (d / "adapter_config.json").write_text(json.dumps(acfg))
    return d


@pytest.fixture(autouse=True)
def _no_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No real cache or model root of the machine running the tests leaks in."""
    for var in (MODEL_ROOT_ENV, "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def _hf_repo(cache: Path, repo_id: str) -> Path:
    return cache / ("models--" + repo_id.replace("/", "--"))


def test_the_embedded_adapter_s_relative_base() -> None:
    assert resolve_base(REPO / "checkpoints/arith-d2f-lora") == REPO / "checkpoints/arith-dream-teacher"


def test_explicit_base_wins_and_a_wrong_one_is_an_error(tmp_path: Path) -> None:
    base = _model(tmp_path / "mine")
    adapter = _adapter(tmp_path / "a", "../elsewhere")
    _model(tmp_path / "elsewhere")
    assert resolve_base(adapter, base) == base.resolve()
    assert resolve_base(adapter, str(base)) == base.resolve()
    assert resolve_base(adapter, "") == (tmp_path / "elsewhere").resolve()  # "" = not given (config default)
    with pytest.raises(FileNotFoundError, match=r"given explicitly, .*nope, is not a model directory"):
        resolve_base(adapter, tmp_path / "nope")  # not silently replaced by ../elsewhere


def test_absolute_path(tmp_path: Path) -> None:
    base = _model(tmp_path / "models" / "llada")
    assert resolve_base(_adapter(tmp_path / "a", str(base)), None) == base.resolve()


def test_model_root_for_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = _adapter(tmp_path / "a", HUB_ID)
    empty, root = tmp_path / "empty-root", tmp_path / "root"
    base = _model(root / HUB_ID)
    monkeypatch.setenv(MODEL_ROOT_ENV, os.pathsep.join([str(empty), str(root)]))
    assert resolve_base(adapter) == base.resolve()


def test_a_relative_base_beats_the_model_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = _adapter(tmp_path / "a", HUB_ID)
    near = _model(adapter / HUB_ID)
    _model(tmp_path / "root" / HUB_ID)
    monkeypatch.setenv(MODEL_ROOT_ENV, str(tmp_path / "root"))
    assert resolve_base(adapter) == near.resolve()


def test_hf_cache_follows_refs_main(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    repo = _hf_repo(cache, HUB_ID)
    pinned = _model(repo / "snapshots" / "aaaa")
    _model(repo / "snapshots" / "bbbb")  # newer, but not what refs/main names
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("aaaa\n")
    assert resolve_base(_adapter(tmp_path / "a", HUB_ID)) == pinned.resolve()


def test_hf_cache_without_refs_takes_the_newest_snapshot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    repo = _hf_repo(tmp_path / "hfhome" / "hub", HUB_ID)
    old, new = _model(repo / "snapshots" / "old"), _model(repo / "snapshots" / "new")
    now = time.time()
    os.utime(old, (now - 100, now - 100))
    os.utime(new, (now, now))
    (repo / "snapshots" / "partial").mkdir()  # a snapshot without config.json never counts
    assert resolve_base(_adapter(tmp_path / "a", HUB_ID)) == new.resolve()


def test_hf_cache_location_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hf_hub_cache() == tmp_path / "home" / ".cache" / "huggingface" / "hub"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert hf_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert hf_hub_cache() == tmp_path / "hfhome" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    assert hf_hub_cache() == tmp_path / "hub"


def test_default_hf_cache_under_home(tmp_path: Path) -> None:
    base = _model(_hf_repo(tmp_path / "home" / ".cache" / "huggingface" / "hub", HUB_ID) / "snapshots" / "x")
    assert resolve_base(_adapter(tmp_path / "a", HUB_ID)) == base.resolve()


def test_not_found_names_the_adapter_the_base_and_every_place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    adapter = _adapter(tmp_path / "a", HUB_ID)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError) as e:
        resolve_base(adapter)
    msg = str(e.value)
    for part in (f"adapter {adapter}", repr(HUB_ID), f"relative to the adapter: {adapter / HUB_ID}",
                 f"${MODEL_ROOT_ENV}/{HUB_ID} (${MODEL_ROOT_ENV} is not set)",
                 str(_hf_repo(tmp_path / "hub", HUB_ID) / "snapshots"), "base_model_dir"):
        assert part in msg, (part, msg)
    monkeypatch.setenv(MODEL_ROOT_ENV, str(tmp_path / "root"))
    with pytest.raises(FileNotFoundError, match=f"TESSERA_MODEL_ROOT: {tmp_path / 'root' / HUB_ID}"):
        resolve_base(adapter)


def test_an_author_s_path_is_not_a_hub_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MODEL_ROOT_ENV, str(tmp_path / "root"))
    _model(tmp_path / "root" / "LLaDA-8B-Instruct")
    with pytest.raises(FileNotFoundError) as e:
        resolve_base(_adapter(tmp_path / "a", "/home/author/LLaDA-8B-Instruct"))
    assert "the absolute path /home/author/LLaDA-8B-Instruct" in str(e.value)
    assert "Hugging Face cache" not in str(e.value)  # only hub ids are looked up there


def test_no_base_name(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="names no base_model_name_or_path"):
        resolve_base(_adapter(tmp_path / "a", None))
    assert resolve_base(_adapter(tmp_path / "b", None), _model(tmp_path / "m")) == (tmp_path / "m").resolve()
