"""The catalog's prompt-length check without a worker: a described model and a recording counter."""

from __future__ import annotations

import asyncio

from services.gateway.catalog import Catalog, TextModel
from services.gateway.config import GatewayConfig
from tessera.worker.v1 import worker_pb2

POSITIONS, OVERHEAD = 24, 2


class _Counter:
    """Counts one token per word, inside a two-token template unless the prompt is raw (as the echo worker)."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, bool]] = []

    async def count_tokens(self, model: str, prompt: str, timeout: float,
                           raw_prompt: bool = False) -> worker_pb2.CountTokensResponse:
        self.asked.append((prompt, raw_prompt))
        return worker_pb2.CountTokensResponse(prompt_tokens=len(prompt.split()) + (0 if raw_prompt else OVERHEAD))


def _catalog() -> tuple[Catalog, _Counter]:
    counter = _Counter()
    cat = Catalog(GatewayConfig(), counter)  # type: ignore[arg-type]
    cat.text["m"] = TextModel(worker_pb2.TextModelInfo(name="m", max_positions=POSITIONS, default_max_tokens=4,
                                                       prompt_overhead_tokens=OVERHEAD), 0.0)
    return cat, counter


def test_a_raw_prompt_has_no_format_overhead() -> None:
    async def go() -> None:
        cat, counter = _catalog()
        # 3 bytes + 21 new tokens: fits for sure as is; with the template's 2 it must be counted.
        assert await cat.text_violations("m", "abc", 21, "request", raw_prompt=True) == []
        assert counter.asked == []
        assert await cat.text_violations("m", "abc", 21, "request") == []
        assert counter.asked == [("abc", False)]
        # 10 words near the limit: counted both ways, by the worker, and only the formatted one is too long.
        words = " ".join("abcdefghij")
        assert await cat.text_violations("m", words, 13, "request", raw_prompt=True) == []
        (v,) = await cat.text_violations("m", words, 13, "request")
        assert v[0] == "request.prompt" and "12 tokens in the prompt format" in v[1] and "needs 25" in v[1]
        (v,) = await cat.text_violations("m", words, 15, "request", raw_prompt=True)
        assert "10 tokens as a raw prompt" in v[1] and "needs 25" in v[1]
        assert counter.asked[1:] == [(words, True), (words, False), (words, True)]
    asyncio.run(go())
