"""The text engine behind the text worker: models.engine.TextEngine driven request by request.

Decoding runs in a thread pool so the replica's event loop stays free for other requests and
health checks. Cancellation is checked by a forward pre-hook on the model, so a cancelled
request stops before its next forward pass even mid-way through a decoder step.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

import torch

from models.decoders import DecodeEvent, Decoder, make_decoder
from models.engine import TextEngine
from models.sampling import SamplingParams
from models.tokenizer import StreamDetokenizer
from services.workers.base import job_seed
from services.workers.protocol import InvalidRequestError
from services.workers.text.config import D2F_KNOBS, TextModelConfig
from tessera.worker.v1.worker_pb2 import (
    DescribeTextResponse,
    GenerateTextRequest,
    GenerateTextResponse,
    TextModelInfo,
)

RECENT_JOBS = 1024  # job stats kept for inspection (tests, debugging)


class DecodeCancelled(Exception):
    """Raised inside a decode thread by the forward hook once its request is gone."""


@dataclass(slots=True)
class JobStats:
    job_id: str
    forwards: int = 0  # forward passes actually run (counted by the model hook)
    tokens: int = 0  # tokens sent to the caller (after skip_tokens)
    state: str = "running"  # running | finished | cancelled | failed
    decoding: bool = False  # a decode step is running in a thread right now
    cancelled: bool = False  # read by the decode thread's forward hook
    started: float = 0.0
    ended: float = 0.0


@dataclass(slots=True)
class Plan:
    """A validated request."""

    job: str
    prompt_ids: list[int]
    params: SamplingParams
    decoder: Decoder
    skip: int


_current = threading.local()  # the JobStats of the request this decode thread is running


def _before_forward(_module: torch.nn.Module, _args: Any) -> None:
    job: JobStats | None = getattr(_current, "job", None)
    if job is not None and job.cancelled:
        raise DecodeCancelled(job.job_id)


def _after_forward(_module: torch.nn.Module, _args: Any, _out: Any) -> None:
    job: JobStats | None = getattr(_current, "job", None)
    if job is not None:
        job.forwards += 1


def _step(it: Iterator[DecodeEvent], job: JobStats) -> DecodeEvent | None:
    _current.job, job.decoding = job, True
    try:
        return next(it, None)
    finally:
        _current.job, job.decoding = None, False


class LocalTextEngine:
    """TextEngineProtocol over an in-process models.engine.TextEngine."""

    def __init__(self, cfg: TextModelConfig, max_concurrency: int = 4) -> None:
        self.cfg = cfg
        self.max_concurrency = max_concurrency
        self.engine: TextEngine | None = None
        self.jobs: OrderedDict[str, JobStats] = OrderedDict()
        self._pool: ThreadPoolExecutor | None = None
        self._defaults = cfg.decoder.options_for(cfg.method)

    async def start(self) -> None:
        if not self.cfg.path.exists():
            raise FileNotFoundError(f"model dir {self.cfg.path} does not exist (is the checkpoint trained yet?)")
        if self.cfg.torch_threads:
            torch.set_num_threads(self.cfg.torch_threads)
        self.engine = await asyncio.to_thread(
            TextEngine, self.cfg.path, self.cfg.method, self._defaults,
            dtype=getattr(torch, self.cfg.dtype), device=self.cfg.device)
        self.engine.model.register_forward_pre_hook(_before_forward)
        self.engine.model.register_forward_hook(_after_forward)
        self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="text-decode")

    @property
    def max_positions(self) -> int:
        assert self.engine is not None, "start() first"
        return self.engine.model.config.max_position_embeddings

    def describe(self) -> DescribeTextResponse:
        return DescribeTextResponse(models=[TextModelInfo(
            name=self.cfg.name, method=self.cfg.method, max_positions=self.max_positions,
            default_max_tokens=self.cfg.default_max_tokens)])

    async def check_health(self) -> None:
        if self.engine is None or self._pool is None:
            raise RuntimeError("text engine is not started")

    async def shutdown(self) -> None:
        for job in self.jobs.values():
            job.cancelled = True
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self.engine = None

    def job_stats(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        return asdict(job) if job is not None else None

    def plan(self, req: GenerateTextRequest) -> Plan:
        """Validate a request and resolve its defaults; raises InvalidRequestError."""
        assert self.engine is not None, "start() first"
        cfg = self.cfg
        if req.model and req.model != cfg.name:
            raise InvalidRequestError(f"unknown model {req.model!r}; this worker serves {cfg.name!r}")
        if not req.prompt.strip():
            raise InvalidRequestError("prompt is empty")
        if req.max_tokens < 0 or req.max_tokens > cfg.max_tokens_limit:
            raise InvalidRequestError(f"max_tokens must be in [1, {cfg.max_tokens_limit}] (0 = default "
                                      f"{cfg.default_max_tokens}), got {req.max_tokens}")
        if req.skip_tokens < 0:
            raise InvalidRequestError(f"skip_tokens must be >= 0, got {req.skip_tokens}")
        seed = req.seed if req.HasField("seed") else None
        if seed is None and req.temperature > 0:
            if req.job_id:
                seed = job_seed(req.job_id)
            elif req.skip_tokens:
                raise InvalidRequestError("skip_tokens with temperature > 0 needs a seed or a job_id "
                                          "(the resumed stream must repeat the first one)")
        try:
            params = SamplingParams(temperature=req.temperature, top_p=req.top_p or 1.0,
                                    max_tokens=req.max_tokens or cfg.default_max_tokens, seed=seed)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        overrides: dict[str, Any] = {"block_size": req.block_size} if req.block_size else {}
        for knob in D2F_KNOBS:
            if req.HasField(knob):
                # float32 on the wire: 0.9 arrives as 0.89999998, which must still mean "the default".
                overrides[knob] = round(getattr(req, knob), 6)
        try:
            options = cfg.decoder.options_for(cfg.method, overrides)
            # A per-request decoder, never a mutated shared one: other requests decode concurrently.
            decoder = (self.engine.decoder if options == self._defaults
                       else make_decoder(self.engine.model, cfg.method, **options))
            ids = self.engine.encode_prompt(req.prompt)
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e
        if len(ids) + params.max_tokens > self.max_positions:
            raise InvalidRequestError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                                      f"the model's {self.max_positions} positions")
        if req.skip_tokens > params.max_tokens:
            raise InvalidRequestError(f"skip_tokens ({req.skip_tokens}) exceeds max_tokens ({params.max_tokens})")
        return Plan(req.job_id, ids, params, decoder, req.skip_tokens)

    def _register(self, job_id: str) -> JobStats:
        job = JobStats(job_id, started=time.time())
        if job_id:  # a retry replaces the stats of the attempt before it
            self.jobs.pop(job_id, None)
            self.jobs[job_id] = job
            while len(self.jobs) > RECENT_JOBS:
                self.jobs.popitem(last=False)
        return job

    async def generate(self, request: GenerateTextRequest) -> AsyncIterator[GenerateTextResponse]:
        plan = self.plan(request)
        assert self.engine is not None and self._pool is not None
        job = self._register(plan.job)
        it = plan.decoder.decode(plan.prompt_ids, plan.params)
        detok = StreamDetokenizer(self.engine.tokenizer)
        seen = 0  # tokens decoded so far, skipped ones included
        pending: Future[DecodeEvent | None] | None = None
        try:
            while True:
                pending = self._pool.submit(_step, it, job)
                ev = await asyncio.wrap_future(pending)
                pending = None
                if ev is None:
                    raise RuntimeError(f"{self.cfg.method} decoder ended without a finished event")
                fresh = ev.token_ids
                if seen < plan.skip:
                    # Push the skipped tokens first: the detokenizer then holds exactly the text the
                    # first attempt sent, and the resumed text continues it (even mid-character).
                    k = min(plan.skip - seen, len(fresh))
                    detok.push(fresh[:k])
                    fresh = fresh[k:]
                seen += len(ev.token_ids)
                if not fresh and not ev.finished:
                    continue
                job.tokens += len(fresh)
                msg = GenerateTextResponse(text=detok.push(fresh) if fresh else "", token_count=len(fresh),
                                           forward_passes=ev.forwards)
                if ev.finished:
                    msg.finished, msg.finish_reason = True, ev.finish_reason or "length"
                    msg.prompt_tokens, msg.model = len(plan.prompt_ids), self.cfg.name
                    job.state = "finished"
                yield msg
                if ev.finished:
                    return
        except BaseException as e:
            job.state = "cancelled" if isinstance(e, asyncio.CancelledError | GeneratorExit) else "failed"
            raise
        finally:
            job.ended = time.time()
            if job.state == "running":  # the caller stopped reading after a chunk
                job.state = "cancelled"
            job.cancelled = job.state != "finished"
            self._close_later(it, pending)

    @staticmethod
    def _close_later(it: Iterator[DecodeEvent], pending: Future[DecodeEvent | None] | None) -> None:
        # A step still running in its thread cannot be closed from here ("generator already
        # executing"); the forward hook stops it at its next forward, then it is closed there.
        def close(f: Future[Any] | None = None) -> None:
            if f is not None and not f.cancelled():
                f.exception()  # consume DecodeCancelled
            it.close()

        if pending is not None and not pending.done():
            pending.add_done_callback(close)
        else:
            close()
