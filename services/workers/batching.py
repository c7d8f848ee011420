"""A micro-batcher inside one replica: concurrent requests that arrive within a few milliseconds run
as ONE batched model call.

The image models decode every row of a call in one backbone forward per token and one head call per
sampler step, so B requests cost little more than one on a GPU (and share the Python overhead on a
CPU). Requests are grouped by a key: rows of one call must share what the model call fixes for all
of them (task, steps, guidance scales). One batch runs at a time on one model thread; requests that
arrive meanwhile form the next batch, so under load batches fill up by themselves.

The batch function runs in that thread and gets a `Batch`: `progress(i, event)` streams an event to
request i's caller, and `check()` raises `BatchCancelled` once every caller has gone, so a batch
nobody waits for stops at its next token. A request cancelled while still queued just leaves the queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from services.workers.config import STRICT

Req = TypeVar("Req")
Res = TypeVar("Res")


class BatchCancelled(Exception):
    """Raised inside a batch function (by Batch.check) when no caller waits for its results any more."""


@dataclass(slots=True)
class BatchingConfig:
    __pydantic_config__ = STRICT  # services.workers.config: unknown keys are errors
    """How long the batcher waits for company, and how many requests one model call may hold."""

    max_batch_size: int = 8
    max_wait_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise ValueError(f"batching.max_batch_size must be >= 1, got {self.max_batch_size}")
        if not 0 <= self.max_wait_ms <= 1000:
            raise ValueError(f"batching.max_wait_ms must be in [0, 1000], got {self.max_wait_ms}")


@dataclass(slots=True)
class Done(Generic[Res]):
    """The last event of a request: its result and how it was batched."""

    result: Res
    batch_size: int
    seconds: float  # wall time of the batched model call


@dataclass(slots=True)
class _Slot(Generic[Req]):
    request: Req
    key: Hashable
    loop: asyncio.AbstractEventLoop
    events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    gone: bool = False  # the caller stopped listening


class Batch(Generic[Req]):
    """One model call's requests, as seen from the model thread."""

    def __init__(self, slots: list[_Slot[Req]]) -> None:
        self._slots = slots
        self.requests: list[Req] = [s.request for s in slots]

    def __len__(self) -> int:
        return len(self._slots)

    def progress(self, i: int, event: Any) -> None:
        """Send `event` to request i's caller (thread-safe; dropped if the caller is gone)."""
        slot = self._slots[i]
        if not slot.gone:
            slot.loop.call_soon_threadsafe(slot.events.put_nowait, event)

    def wanted(self, i: int) -> bool:
        """Whether request i's caller still listens (worth computing its previews, say)."""
        return not self._slots[i].gone

    def check(self) -> None:
        """Raise BatchCancelled when every caller has gone (call it between model steps)."""
        if all(s.gone for s in self._slots):
            raise BatchCancelled(f"all {len(self._slots)} requests of the batch were cancelled")


RunBatch = Callable[[Batch[Req]], Sequence[Res]]


class MicroBatcher(Generic[Req, Res]):
    """Groups concurrent `submit` calls into batched `run_batch` calls on one model thread."""

    def __init__(self, run_batch: RunBatch[Req, Res], cfg: BatchingConfig | None = None,
                 key: Callable[[Req], Hashable] = lambda _r: None, name: str = "model") -> None:
        self.run_batch, self.cfg, self.key = run_batch, cfg or BatchingConfig(), key
        self._pending: list[_Slot[Req]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._pool = ThreadPoolExecutor(1, thread_name_prefix=f"{name}-batch")
        self.batches: list[int] = []  # sizes of recent batches (tests, debugging)

    async def submit(self, request: Req) -> AsyncIterator[Any]:
        """The request's events as the batch function reports them, then one `Done`. Closing this
        iterator early (the caller cancelled) drops the request from the queue or, once running, from
        the batch's outputs."""
        loop = asyncio.get_running_loop()
        slot = _Slot(request, self.key(request), loop)
        self._pending.append(slot)
        self._ensure_running(loop)
        assert self._wake is not None
        self._wake.set()
        try:
            while True:
                event = await slot.events.get()
                if isinstance(event, BaseException):
                    raise event
                yield event
                if isinstance(event, Done):
                    return
        finally:
            slot.gone = True
            with contextlib.suppress(ValueError):
                self._pending.remove(slot)

    def _ensure_running(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._collect())

    async def _collect(self) -> None:
        assert self._wake is not None
        while True:
            if not self._pending:
                self._wake.clear()
                await self._wake.wait()
                continue
            # Wait briefly for company, unless a full batch is already there.
            first = self._pending[0]
            deadline = time.monotonic() + self.cfg.max_wait_ms / 1000
            while self._count(first.key) < self.cfg.max_batch_size and (left := deadline - time.monotonic()) > 0:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), left)
            slots = [s for s in self._pending if s.key == first.key and not s.gone][:self.cfg.max_batch_size]
            for s in slots:
                self._pending.remove(s)
            if slots:
                await self._run(slots)

    def _count(self, key: Hashable) -> int:
        return sum(1 for s in self._pending if s.key == key and not s.gone)

    async def _run(self, slots: list[_Slot[Req]]) -> None:
        batch = Batch(slots)
        self.batches = [*self.batches[-255:], len(slots)]
        t0 = time.perf_counter()
        try:
            results = await asyncio.get_running_loop().run_in_executor(self._pool, self.run_batch, batch)
        except BatchCancelled:
            return
        except Exception as e:  # a failed batch fails each of its requests with the same error
            for s in slots:
                s.events.put_nowait(e)
            return
        seconds = time.perf_counter() - t0
        if len(results) != len(slots):
            err = RuntimeError(f"batch function returned {len(results)} results for {len(slots)} requests")
            for s in slots:
                s.events.put_nowait(err)
            return
        for s, r in zip(slots, results, strict=True):
            s.events.put_nowait(Done(r, len(slots), seconds))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._pool.shutdown(wait=False, cancel_futures=True)
