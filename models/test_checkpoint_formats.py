"""Weight file formats (safetensors, sharded, .bin read with weights_only=True) for models and LoRA
adapters, and loading an adapter onto a base found by models.resolve or given as base_dir."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models.checkpoint import load_model, merge_lora, read_weights, save_model
from models.conftest import tiny
from models.engine.text_engine import tokenizer_dir
from models.lora import apply_lora, lora_modules, save_adapter
from models.resolve import MODEL_ROOT_ENV

HUB_ID = "Dream-org/Dream-v0-Instruct-7B"


class NotATensor:
    pass


def _split(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    keys = sorted(tensors)
    half = len(keys) // 2
    return {k: tensors[k] for k in keys[:half]}, {k: tensors[k] for k in keys[half:]}


def _write_index(d: Path, name: str, shards: list[tuple[str, dict[str, torch.Tensor]]]) -> None:
    weight_map = {k: fname for fname, part in shards for k in part}
    (d / f"{name}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Dream model and a LoRA adapter for it, each in every file format."""
    root = tmp_path_factory.mktemp("formats")
    model = tiny("dream")
    save_model(model, root / "base")
    weights = load_file(str(root / "base" / "model.safetensors"))
    out = {"base": root / "base"}

    d = out["bin"] = root / "bin"  # pytorch_model.bin
    d.mkdir()
    shutil.copy(root / "base" / "config.json", d)
    torch.save(weights, d / "pytorch_model.bin")

    d = out["bin_sharded"] = root / "bin-sharded"  # pytorch_model-0000x-of-00002.bin + index
    d.mkdir()
    shutil.copy(root / "base" / "config.json", d)
    shards = [(f"pytorch_model-0000{i + 1}-of-00002.bin", part) for i, part in enumerate(_split(weights))]
    for fname, part in shards:
        torch.save(part, d / fname)
    _write_index(d, "pytorch_model.bin", shards)

    torch.manual_seed(3)
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.copy_(0.1 * torch.randn_like(m.lora_B))
    save_adapter(model, root / "adapter", base_model="../base", r=4, alpha=8, dropout=0.0)
    out["adapter"] = root / "adapter"
    lora = load_file(str(root / "adapter" / "adapter_model.safetensors"))
    acfg = (root / "adapter" / "adapter_config.json").read_text()

    d = out["adapter_bin"] = root / "adapter-bin"
    d.mkdir()
    (d / "adapter_config.json").write_text(acfg)
    torch.save(lora, d / "adapter_model.bin")

    d = out["adapter_sharded"] = root / "adapter-sharded"
    d.mkdir()
    (d / "adapter_config.json").write_text(acfg)
    shards = [(f"adapter_model-0000{i + 1}-of-00002.safetensors", part) for i, part in enumerate(_split(lora))]
    for fname, part in shards:
        save_file(part, str(d / fname))
    _write_index(d, "adapter_model.safetensors", shards)
    return out


def _same(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.arange(12).view(2, 6) % 40
    assert torch.equal(a(ids), b(ids))


@pytest.mark.parametrize("fmt", ["bin", "bin_sharded"])
def test_bin_models_load_like_safetensors(dirs: dict[str, Path], fmt: str) -> None:
    _same(load_model(dirs[fmt]), load_model(dirs["base"]))


@pytest.mark.parametrize("fmt", ["adapter_bin", "adapter_sharded"])
def test_bin_and_sharded_adapters_merge_like_safetensors(dirs: dict[str, Path], fmt: str) -> None:
    want = load_model(dirs["base"], dirs["adapter"])
    _same(load_model(dirs["base"], dirs[fmt]), want)
    assert not torch.equal(want.layers[0].q_proj.weight, load_model(dirs["base"]).layers[0].q_proj.weight)


def test_safetensors_win_over_bin(dirs: dict[str, Path], tmp_path: Path) -> None:
    d = shutil.copytree(dirs["base"], tmp_path / "both")
    torch.save({k: torch.zeros_like(v) for k, v in read_weights(d).items()}, d / "pytorch_model.bin")
    _same(load_model(d), load_model(dirs["base"]))


def test_missing_weights_name_every_file_looked_for(tmp_path: Path, dirs: dict[str, Path]) -> None:
    (tmp_path / "a").mkdir()
    shutil.copy(dirs["adapter"] / "adapter_config.json", tmp_path / "a")
    with pytest.raises(FileNotFoundError, match=r"adapter_model\.safetensors.*adapter_model\.bin"):
        load_model(dirs["base"], tmp_path / "a")
    with pytest.raises(FileNotFoundError, match=r"model\.safetensors.*pytorch_model\.bin"):
        read_weights(tmp_path / "a")


def test_bin_is_read_with_weights_only(tmp_path: Path) -> None:
    torch.save({"w": torch.ones(2), "x": NotATensor()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(pickle.UnpicklingError, match=r"[Ww]eights only"):
        read_weights(tmp_path)
    torch.save([torch.ones(2)], tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="not a state dict"):
        read_weights(tmp_path)


@pytest.mark.parametrize("key,value", [("bias", "all"), ("modules_to_save", ["lm_head"]), ("fan_in_fan_out", True)])
def test_adapter_options_we_do_not_merge_are_refused(dirs: dict[str, Path], tmp_path: Path, key: str,
                                                     value: object) -> None:
    d = shutil.copytree(dirs["adapter"], tmp_path / "a")
    acfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**acfg, key: value}))
    with pytest.raises(ValueError, match=f"{key}={value!r}".replace("[", r"\[").replace("]", r"\]")):
        merge_lora(read_weights(dirs["base"]), "dream", d)


def _hub_adapter(dirs: dict[str, Path], tmp_path: Path) -> Path:
    d = shutil.copytree(dirs["adapter"], tmp_path / "published")
    acfg = json.loads((d / "adapter_config.json").read_text())
    (d / "adapter_config.json").write_text(json.dumps({**acfg, "base_model_name_or_path": HUB_ID}))
    return d


def test_an_adapter_naming_a_hub_id(dirs: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (MODEL_ROOT_ENV, "HF_HUB_CACHE", "HF_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    adapter = _hub_adapter(dirs, tmp_path)
    want = load_model(dirs["base"], dirs["adapter"])
    with pytest.raises(FileNotFoundError, match=f"base model '{HUB_ID}' not found"):
        load_model(adapter)
    _same(load_model(adapter, base_dir=dirs["base"]), want)
    assert tokenizer_dir(adapter, dirs["base"]) == dirs["base"].resolve()
    shutil.copytree(dirs["base"], tmp_path / "root" / HUB_ID)
    monkeypatch.setenv(MODEL_ROOT_ENV, str(tmp_path / "root"))
    _same(load_model(adapter), want)
    assert tokenizer_dir(adapter) == (tmp_path / "root" / HUB_ID).resolve()


def test_base_dir_only_for_an_adapter(dirs: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="not an adapter"):
        load_model(dirs["base"], base_dir=dirs["base"])
