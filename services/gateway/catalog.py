"""The models the deployment serves and their limits: the gateway's config, plus what the text
workers say of themselves (TextWorkerService.DescribeText: positions, max_tokens limit, the prompt
format's overhead), refreshed in the background.

A prompt's length in tokens is checked before its job is enqueued, counted by the worker's own
tokenizer and prompt format (one owner: the gateway image carries no tokenizer). Most prompts need no
count: no tokenizer makes more tokens than the prompt has UTF-8 bytes, so a prompt whose byte length
plus overhead plus max_tokens fits the positions fits for sure; only a prompt near the limit costs a
CountTokens call. Without a description (no worker answered yet), or when the count cannot be had,
only the character limits apply here, and the worker's own check fails such a job at once.

A raw prompt (TextParams.raw_prompt) is sent as is: no template, no BOS. Its overhead is 0, exactly,
not a guess: the bound stays sound (tokens <= bytes), and the worker counts it raw as well
(CountTokensRequest.raw_prompt), so a raw prompt may use the positions a template would have taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import grpc

from services.dispatcher.worker_client import WorkerClient
from services.gateway.config import GatewayConfig
from tessera.v1 import models_pb2
from tessera.worker.v1 import worker_pb2

log = logging.getLogger("tessera.gateway")
_DESCRIBE_TIMEOUT_S = 5.0
_COUNT_TIMEOUT_S = 2.0


@dataclass(slots=True)
class TextModel:
    """What a text worker said of one model (DescribeText)."""

    info: worker_pb2.TextModelInfo
    described_at: float


class Catalog:
    def __init__(self, cfg: GatewayConfig, worker: WorkerClient | None, refresh_s: float = 30.0) -> None:
        self.cfg, self.worker, self.refresh_s = cfg, worker, refresh_s
        self.text: dict[str, TextModel] = {}
        self.counted = 0  # CountTokens calls made (prompts near a limit)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.worker is not None:
            self._task = asyncio.create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def refresh(self) -> bool:
        """Ask the text workers to describe their models; True when one answered."""
        if self.worker is None:
            return False
        try:
            resp = await self.worker.describe_text(_DESCRIBE_TIMEOUT_S)
        except grpc.aio.AioRpcError as e:
            log.debug("DescribeText: %s", e.code().name)
            return False
        now = time.monotonic()
        for info in resp.models:
            self.text[info.name] = TextModel(info, now)
        return True

    async def _refresh_forever(self) -> None:
        delay = 1.0
        while True:
            ok = await self.refresh()
            # Until a worker answers, ask often (workers start after the gateway); then every refresh_s.
            delay = self.refresh_s if ok else min(delay * 2, self.refresh_s)
            await asyncio.sleep(delay)

    def text_model(self, name: str) -> TextModel | None:
        return self.text.get(name)

    async def text_violations(self, model: str, prompt: str, max_tokens: int,
                              field: str, raw_prompt: bool = False) -> list[tuple[str, str]]:
        """A described model's limits: max_tokens against its limit, prompt + max_tokens against its
        positions. [] when the model was never described or its count could not be had."""
        m = self.text.get(model)
        if m is None:
            return []
        info, v = m.info, []
        if info.max_tokens_limit and max_tokens > info.max_tokens_limit:
            v.append((f"{field}.params.max_tokens", f"must be at most {info.max_tokens_limit} for model "
                                                    f"{model!r}, got {max_tokens}"))
        wanted = max_tokens or info.default_max_tokens
        overhead = 0 if raw_prompt else info.prompt_overhead_tokens  # a raw prompt gets no format around it
        if not info.max_positions or len(prompt.encode()) + overhead + wanted <= info.max_positions:
            return v  # fits whatever the tokenizer does (at most one token per byte)
        n = await self._count(model, prompt, raw_prompt)
        if n is not None and n + wanted > info.max_positions:
            form = "as a raw prompt" if raw_prompt else "in the prompt format"
            v.append((f"{field}.prompt", f"is {n} tokens {form} of model {model!r}; with max_tokens "
                                         f"{wanted} that needs {n + wanted} positions and the model has "
                                         f"{info.max_positions}"))
        return v

    async def _count(self, model: str, prompt: str, raw_prompt: bool) -> int | None:
        if self.worker is None:
            return None
        self.counted += 1
        try:
            return (await self.worker.count_tokens(model, prompt, _COUNT_TIMEOUT_S, raw_prompt)).prompt_tokens
        except grpc.aio.AioRpcError as e:  # the worker's check at dispatch still holds
            log.debug("CountTokens: %s", e.code().name)
            return None

    def list(self) -> models_pb2.ListModelsResponse:
        cfg, out = self.cfg, []
        text_limit = cfg.text.max_tokens
        for i, name in enumerate(cfg.text.models):
            mi = models_pb2.ModelInfo(name=name, kinds=["text"], is_default=i == 0, max_tokens=text_limit,
                                      max_prompt_chars=cfg.text.max_prompt_chars)
            if (m := self.text.get(name)) is not None:
                info = m.info
                mi.ready, mi.method, mi.max_positions = True, info.method, info.max_positions
                mi.default_max_tokens = info.default_max_tokens
                mi.max_tokens = min(text_limit, info.max_tokens_limit or text_limit)
                mi.max_prompt_tokens = max(0, info.max_positions - 1 - info.prompt_overhead_tokens)
            out.append(mi)
        for i, name in enumerate(cfg.images.models):
            out.append(models_pb2.ModelInfo(name=name, kinds=["image", "edit"], is_default=i == 0, ready=True,
                                            max_prompt_chars=cfg.images.max_prompt_chars))
        for i, name in enumerate(cfg.understanding.models):
            out.append(models_pb2.ModelInfo(name=name, kinds=["understand"], is_default=i == 0, ready=True,
                                            max_tokens=cfg.understanding.max_tokens,
                                            max_prompt_chars=cfg.understanding.max_question_chars))
        return models_pb2.ListModelsResponse(models=out)
