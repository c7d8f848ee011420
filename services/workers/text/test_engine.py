"""LocalTextEngine in process (no Ray): the wire mapping onto models.engine and the replica's lifecycle."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from models.checkpoint import load_model
from models.engine import TextEngine, request_seed
from models.lora import apply_lora, lora_modules, save_adapter
from models.sampling import SamplingParams
from services.workers.protocol import InvalidRequestError
from services.workers.text.config import TextModelConfig
from services.workers.text.conftest import MAX_POSITIONS
from services.workers.text.engine import LocalTextEngine
from tessera.worker.v1.worker_pb2 import CountTokensRequest, GenerateTextRequest, GenerateTextResponse

PROMPT = "What is 2+3?"
SLOW = {"max_tokens": 900, "tau_conf": 1.0, "tau_act": 1.0}  # one token per forward


@pytest.fixture(scope="module")
def local(tiny_model_dir: Path) -> Iterator[LocalTextEngine]:
    torch.set_num_threads(1)
    eng = LocalTextEngine(TextModelConfig(name="tiny", model_dir=str(tiny_model_dir), max_tokens_limit=1000,
                                          torch_threads=1))
    asyncio.run(eng.start())
    yield eng
    asyncio.run(eng.shutdown())


def generate(eng: LocalTextEngine, **fields: Any) -> list[GenerateTextResponse]:
    async def go() -> list[GenerateTextResponse]:
        return [m async for m in eng.generate(GenerateTextRequest(**{"prompt": PROMPT, **fields}))]
    return asyncio.run(go())


def test_the_stream_is_the_engine_s_generation(local: LocalTextEngine, tiny_model_dir: Path) -> None:
    msgs = generate(local, job_id="match", max_tokens=64)
    ref = TextEngine(tiny_model_dir, "d2f", local.cfg.decoder.options_for("d2f"))
    want = ref.generate([PROMPT], SamplingParams(max_tokens=64))[0]
    last = msgs[-1]
    assert "".join(m.text for m in msgs) == want.text and sum(m.token_count for m in msgs) == 64
    assert (last.finished, last.finish_reason, last.model, last.forward_passes) == (True, "length", "tiny",
                                                                                     want.forwards)
    assert last.prompt_tokens == len(ref.encode_prompt(PROMPT)) and not any(m.finished for m in msgs[:-1])
    st = local.job_stats("match")
    assert st is not None and (st["job_id"], st["state"], st["tokens"], st["forwards"]) == (
        "match", "finished", 64, want.forwards)
    assert local.job_stats("never") is None
    assert local.describe().models[0].max_positions == MAX_POSITIONS


def test_resumes_and_seeds_a_sampled_job_from_its_id(local: LocalTextEngine) -> None:
    sampled = {"temperature": 0.8, "top_p": 0.5, "max_tokens": 48}
    full = generate(local, job_id="resume", **sampled)
    assert full == generate(local, job_id="resume", seed=request_seed("resume"), **sampled)
    skip = full[0].token_count + full[1].token_count // 2
    resumed = generate(local, job_id="resume", skip_tokens=skip, **sampled)
    assert sum(m.token_count for m in resumed) == 48 - skip
    assert "".join(m.text for m in full).endswith("".join(m.text for m in resumed))


@pytest.mark.parametrize("fields,message", [
    ({"prompt": "seven " * 1100}, f"exceeds the model's {MAX_POSITIONS} positions"),
    ({"model": "gpt-9"}, "unknown model 'gpt-9'; this worker serves 'tiny'"),
    ({"prompt": "  "}, "prompt is empty"),
    ({"tau_conf": 1.5}, "tau_conf must be in [0, 1]"),
    ({"max_tokens": 5000}, "max_tokens must be in [1, 1000]"),
    ({"temperature": 0.5, "skip_tokens": 4}, "needs a seed or a job_id"),
    ({"skip_tokens": -1}, "skip_tokens must be >= 0"),
    ({"skip_tokens": 200}, "skip_tokens (200) exceeds max_tokens (128)"),
    ({"top_p": 1.5}, "top_p must be in (0, 1]"),
])
def test_bad_requests_raise_invalid_request(local: LocalTextEngine, fields: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError) as err:
        generate(local, **fields)
    assert message in str(err.value)


def test_raw_prompt_reaches_the_engine_and_is_counted_without_the_format(local: LocalTextEngine) -> None:
    assert local.plan(GenerateTextRequest(prompt=PROMPT, raw_prompt=True)).request.raw_prompt
    assert not local.plan(GenerateTextRequest(prompt=PROMPT)).request.raw_prompt
    assert local.engine is not None
    formatted = local.count_tokens(CountTokensRequest(prompt=PROMPT)).prompt_tokens
    raw = local.count_tokens(CountTokensRequest(prompt=PROMPT, raw_prompt=True)).prompt_tokens
    assert formatted == len(local.engine.encode_prompt(PROMPT))
    assert raw == len(local.engine.tokenizer.encode(PROMPT))
    # The tiny model's "Question: {prompt}\nAnswer:" is the whole difference: describe()'s overhead.
    assert formatted - raw == local.describe().models[0].prompt_overhead_tokens > 0
    with pytest.raises(InvalidRequestError, match="encodes to no tokens"):
        local.count_tokens(CountTokensRequest(prompt="", raw_prompt=True))


def test_a_cancelled_or_abandoned_call_stops_decoding(local: LocalTextEngine) -> None:
    async def first_then(stop: str, job_id: str) -> None:
        gen = local.generate(GenerateTextRequest(prompt=PROMPT, job_id=job_id, **SLOW))
        if stop == "close":
            assert (await anext(gen)).token_count > 0
            await gen.aclose()
            return

        async def read(g: AsyncIterator[GenerateTextResponse]) -> None:
            async for _ in g:
                pass

        task = asyncio.create_task(read(gen))
        while (st := local.job_stats(job_id)) is None or st["forwards"] < 5:
            await asyncio.sleep(0.001)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    for stop in ("close", "cancel"):
        asyncio.run(first_then(stop, stop))
        deadline = time.monotonic() + 10
        while (st := local.job_stats(stop)) is not None and st["decoding"] and time.monotonic() < deadline:
            time.sleep(0.001)  # the step in progress ends at its next forward pass
        assert st is not None and st["state"] == "cancelled" and st["forwards"] < SLOW["max_tokens"] // 2, st


def test_shutdown_ends_health(tiny_model_dir: Path) -> None:
    eng = LocalTextEngine(TextModelConfig(name="tiny", model_dir=str(tiny_model_dir)))
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(eng.check_health())
    asyncio.run(eng.start())
    asyncio.run(eng.check_health())
    asyncio.run(eng.shutdown())
    with pytest.raises(RuntimeError, match="not started"):
        asyncio.run(eng.check_health())


def test_prompt_overhead_and_counts_follow_the_prompt_format(tiny_model_dir: Path, tmp_path: Path) -> None:
    """describe's overhead and CountTokens under each mode; "chat" on a copy of the tiny model given a chat
    template and a BOS (the tiny tokenizer's <|endoftext|> plays it)."""
    chat_dir = shutil.copytree(tiny_model_dir, tmp_path / "chat")
    cfg_path = chat_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(bos_token="<|endoftext|>", chat_template="<|user|>{{ messages[0]['content'] }}<|assistant|>")
    cfg_path.write_text(json.dumps(cfg))
    prompt = "What is 12+30?"
    seen = {}
    for mode, d in (("raw", tiny_model_dir), ("template", tiny_model_dir), ("auto", tiny_model_dir),
                    ("chat", chat_dir)):
        eng = LocalTextEngine(TextModelConfig(name="tiny", model_dir=str(d), prompt_format=mode))
        asyncio.run(eng.start())
        try:
            assert eng.engine is not None
            tok = eng.engine.tokenizer
            overhead = eng.describe().models[0].prompt_overhead_tokens
            count = eng.count_tokens(CountTokensRequest(model="tiny", prompt=prompt)).prompt_tokens
            assert count == len(tok.encode_prompt(prompt, mode))
            seen[mode] = (overhead, count - len(tok.encode(prompt)))
        finally:
            asyncio.run(eng.shutdown())
    bos_and_markers = 1 + len(tok.encode("<|user|>")) + len(tok.encode("<|assistant|>"))
    assert seen["raw"] == (0, 0)
    assert seen["template"] == seen["auto"] and seen["template"][0] > 0
    assert seen["chat"] == (bos_and_markers, bos_and_markers)


def test_base_model_dir_reaches_the_engine(tiny_model_dir: Path, tmp_path: Path) -> None:
    """An adapter whose base_model_name_or_path is a hub id not on disk loads on model.base_model_dir."""
    model = load_model(tiny_model_dir)
    torch.manual_seed(0)
    apply_lora(model, ["q_proj", "v_proj"], r=2, alpha=4, dropout=0.0)
    with torch.no_grad():
        for _, m in lora_modules(model):
            m.lora_B.normal_(std=0.1)
    save_adapter(model, tmp_path / "adapter", base_model="nobody/not-downloaded", r=2, alpha=4, dropout=0.0)
    cfg = TextModelConfig(name="tiny", model_dir=str(tmp_path / "adapter"))
    with pytest.raises(FileNotFoundError, match="base model 'nobody/not-downloaded' not found"):
        asyncio.run(LocalTextEngine(cfg).start())
    eng = LocalTextEngine(TextModelConfig(name="tiny", model_dir=str(tmp_path / "adapter"),
                                          base_model_dir=str(tiny_model_dir)))
    asyncio.run(eng.start())
    try:
        assert eng.engine is not None
        merged = eng.engine.model.layers[0].q_proj.weight
        assert torch.equal(merged, load_model(tiny_model_dir, tmp_path / "adapter").layers[0].q_proj.weight)
        assert not torch.equal(merged, load_model(tiny_model_dir).layers[0].q_proj.weight)
        assert eng.engine.tokenizer.encode(PROMPT)  # the base's tokenizer
    finally:
        asyncio.run(eng.shutdown())
