"""The text app's args: loading and validation (no Ray, no model)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.workers import serve_config
from services.workers.config import REPO_ROOT, ConfigError
from services.workers.text.config import DecoderDefaults, TextArgs, TextModelConfig


def test_shipped_serve_config_is_the_embedded_model_with_the_paper_defaults() -> None:
    args = serve_config.app_args(serve_config.load(), "text")
    assert isinstance(args, TextArgs)
    assert args == TextArgs()  # the Serve config and the code defaults name the same model
    m = args.model
    assert (m.name, m.method, m.default_max_tokens) == ("d2f-arith", "d2f", 128)
    assert m.path == REPO_ROOT / "checkpoints/arith-d2f-lora"
    assert m.decoder.options_for("d2f") == {"block_size": 32, "tau_add": 0.1, "tau_act": 0.95, "tau_conf": 0.9,
                                               "whole_blocks": False}


def test_absolute_model_dir_is_kept(tmp_path: Path) -> None:
    assert TextModelConfig(model_dir=str(tmp_path)).path == tmp_path


@pytest.mark.parametrize("data,message", [
    ({"model": {"method": "beam"}}, "args.model: model.method must be one of"),
    ({"model": {"prompt_format": "llama3"}}, "args.model: model.prompt_format must be one of"),
    ({"model": {"decoder": {"tau_conf": 1.5}}}, "args.model.decoder: tau_conf must be in [0, 1]"),
    ({"model": {"decoder": {"block_size": 0}}}, "block_size must be positive"),
    ({"model": {"default_max_tokens": 600}}, "default_max_tokens must be in [1, max_tokens_limit=512]"),
    ({"model": {"dtype": "int8"}}, "model.dtype must be one of"),
    ({"model": {"device": "tpu"}}, "model.device must be"),
    ({"model": {"max_tokens": 5}}, "args.model.max_tokens: unknown key"),
    ({"model": {"decoder": {"tau": 0.5}}}, "args.model.decoder.tau: unknown key"),
    ({"model": {"torch_threads": "four"}}, "args.model.torch_threads: Input should be a valid integer"),
    ({"deployment": {"num_replicas": 2}}, "args.deployment: unknown key"),  # placement is Serve's, not args
])
def test_invalid_args_name_the_key(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        TextArgs.load(data)
    assert message in str(err.value)


def test_prompt_format_defaults_to_auto() -> None:
    assert TextModelConfig().prompt_format == "auto"
    assert TextArgs.load({"model": {"prompt_format": "raw"}}).model.prompt_format == "raw"


def test_decoder_knobs_per_method() -> None:
    d = DecoderDefaults()
    assert d.options_for("fast-dllm", {"tau_conf": 0.8}) == {"block_size": 32, "threshold": 0.8}
    assert d.options_for("ar") == {}
    with pytest.raises(ValueError, match="the vanilla decoder has no tau_add"):
        d.options_for("vanilla", {"tau_add": 0.2})


def test_batching_section_builds_the_engine_config() -> None:
    args = TextArgs.load({"model": {"batching": {"max_batched_tokens": 2048, "kv_cache_tokens": 4096,
                                                 "adaptive": True}}})
    cfg = args.model.batching.engine_config(8)
    assert (cfg.max_num_seqs, cfg.max_num_batched_tokens, cfg.kv_cache_tokens, cfg.adaptive.enabled) == (
        8, 2048, 4096, True)
    assert TextArgs().model.batching.engine_config(4).kv_cache_tokens is None  # 0 = the engine's default
    with pytest.raises(ConfigError, match="max_num_batched_tokens must be >= 1"):
        TextArgs.load({"model": {"batching": {"max_batched_tokens": 0}}})


def test_base_model_dir_resolves_like_model_dir(tmp_path: Path) -> None:
    assert TextModelConfig().base_path is None  # "" = found from the adapter's base_model_name_or_path
    args = TextArgs.load({"model": {"base_model_dir": "models/llada-8b-instruct"}})
    assert args.model.base_path == REPO_ROOT / "models/llada-8b-instruct"
    assert TextModelConfig(base_model_dir=str(tmp_path)).base_path == tmp_path
