"""The understanding engine: image + question -> greedy answer through Orthus's LM head, streamed token
by token, with concurrent questions decoded together by the micro-batcher.

Decoding is greedy, so a retried job (skip_tokens) replays the same answer and resumes after what
its earlier attempt streamed. A batch runs to its longest answer; rows that are done are no longer
reported, and a batch stops early once every row is done or every caller has gone.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from models.images import OrthusBackend, native_resolution
from models.tokenizer import StreamDetokenizer
from services.common.images import ImageError, decode_rgb
from services.workers.batching import Batch, Done, MicroBatcher
from services.workers.protocol import InvalidRequestError
from services.workers.runtime import check_model_name, prepare_replica
from services.workers.understanding.config import UnderstandingArgs
from tessera.worker.v1.worker_pb2 import UnderstandRequest, UnderstandResponse


@dataclass(slots=True)
class Question:
    text: str
    image: np.ndarray  # uint8 (res, res, 3)
    max_tokens: int


@dataclass(slots=True)
class Token:
    id: int
    step: int  # decoding steps so far


@dataclass(slots=True)
class Answer:
    finish_reason: str  # "stop" | "length"
    steps: int
    prompt_tokens: int


class _AllDone(Exception):
    """Every row of the batch has its answer: stop decoding the longest one's tail."""


class UnderstandingEngine:
    def __init__(self, cfg: UnderstandingArgs) -> None:
        self.cfg = cfg
        self.backend: OrthusBackend | None = None
        self.batcher: MicroBatcher[Question, Answer] = MicroBatcher(self._run_batch, cfg.batching,
                                                                    name="understand")

    async def start(self) -> None:
        m = self.cfg.model
        prepare_replica(m)
        self.backend = await asyncio.to_thread(OrthusBackend.load, m.path, m.resolution, m.device,
                                               getattr(torch, m.dtype))

    @functools.cached_property
    def resolution(self) -> int:
        """The square questions' images are resized to (config, or the checkpoint's native size)."""
        return self.cfg.model.resolution or native_resolution(self.cfg.model.path)

    async def check_health(self) -> None:
        if self.backend is None:
            raise RuntimeError("understanding engine is not started")

    async def shutdown(self) -> None:
        await self.batcher.close()
        self.backend = None

    def plan(self, req: UnderstandRequest) -> Question:
        m = self.cfg.model
        check_model_name(req.model, m)
        if not req.question.strip():
            raise InvalidRequestError("question is empty")
        if not 0 <= req.max_tokens <= m.max_tokens_limit:
            raise InvalidRequestError(f"max_tokens must be in [1, {m.max_tokens_limit}] (0 = default "
                                      f"{m.default_max_tokens}), got {req.max_tokens}")
        max_tokens = req.max_tokens or m.default_max_tokens
        if not 0 <= req.skip_tokens <= max_tokens:
            raise InvalidRequestError(f"skip_tokens must be in [0, max_tokens={max_tokens}], got {req.skip_tokens}")
        try:
            image = decode_rgb(req.image, self.resolution)
        except ImageError as e:
            raise InvalidRequestError(f"image {e}") from e
        return Question(req.question, image, max_tokens)

    async def understand(self, req: UnderstandRequest) -> AsyncIterator[UnderstandResponse]:
        q = self.plan(req)
        assert self.backend is not None
        detok = StreamDetokenizer(self.backend.parts.tokenizer)
        seen = 0
        async for ev in self.batcher.submit(q):
            if isinstance(ev, Done):
                a: Answer = ev.result
                tail = detok.flush()  # a character cut by the token limit renders as a full decode renders it
                if tail and seen > req.skip_tokens:
                    yield UnderstandResponse(text=tail)
                yield UnderstandResponse(finished=True, finish_reason=a.finish_reason, forward_passes=a.steps,
                                         prompt_tokens=a.prompt_tokens, model=self.cfg.model.name)
                return
            seen += 1
            text = detok.push([ev.id])  # skipped tokens go through the detokenizer too: exact resumption
            if seen > req.skip_tokens:
                yield UnderstandResponse(text=text, token_count=1, forward_passes=ev.step)

    # ---- the model thread -----------------------------------------------------------------------

    def _run_batch(self, batch: Batch[Question]) -> Sequence[Answer]:
        assert self.backend is not None
        qs = batch.requests
        prompts = self.backend.question_prompts(np.stack([q.image for q in qs]), [q.text for q in qs])
        counts, reasons, steps = [0] * len(qs), [""] * len(qs), [0] * len(qs)
        step = 0

        def on_token(fresh: list[int | None]) -> None:
            nonlocal step
            step += 1
            batch.check()
            for i, t in enumerate(fresh):
                if reasons[i]:
                    continue
                steps[i] = step
                if t is None:  # the row emitted sep or EOS
                    reasons[i] = "stop"
                    continue
                counts[i] += 1
                batch.progress(i, Token(t, step))
                if counts[i] == qs[i].max_tokens:
                    reasons[i] = "length"
            if all(reasons):
                raise _AllDone

        try:
            with torch.no_grad():
                self.backend.understand(prompts, max(q.max_tokens for q in qs), on_token)
        except _AllDone:
            pass
        return [Answer(r or "length", n, len(p.ids)) for r, n, p in zip(reasons, steps, prompts, strict=True)]
