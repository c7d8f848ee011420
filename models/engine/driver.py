"""The engine loop: one background thread steps the engine core while any request is queued or
running, and sleeps otherwise (vLLM's AsyncLLMEngine loop). Callers only enqueue requests and read
their deltas, from threads (queue.SimpleQueue) or event loops (asyncio.Queue) alike, so one
replica runs one loop whatever serves it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import queue
import threading
import weakref
from collections.abc import AsyncIterator, Iterator

from models.engine.core import EngineCore
from models.engine.request import DecodeCancelled, RequestStats, TextDelta
from models.engine.sequence import Sequence, Sink

log = logging.getLogger(__name__)


class EngineLoop:
    def __init__(self, core: EngineCore) -> None:
        self.core = core
        self.cond = threading.Condition(core.lock)
        self.closed = False
        self._thread: threading.Thread | None = None

    def submit(self, seq: Sequence) -> None:
        if self.closed:
            raise RuntimeError("the text engine is closed")
        self.core.add(seq)
        with self.cond:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="text-engine", daemon=True)
                self._thread.start()
            self.cond.notify()

    def wake(self) -> None:
        """A request was cancelled: run a step, which drops it and tells its stream."""
        with self.cond:
            self.cond.notify()

    def close(self) -> None:
        """Stop: requests still queued or running are cancelled, and the thread ends after the step
        in progress (joined here, so no step runs once this returns, at interpreter exit too)."""
        with self.cond:
            if self.closed:
                return
            self.closed = True
            self.cond.notify()
        self.core.abort_all(DecodeCancelled("the text engine is closed"))
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self.core.scheduler.has_work():
                    self.cond.wait()
                if self.closed:
                    return
            try:
                self.core.step()
            except Exception as e:  # a bug outside the forward: fail what runs rather than hang it
                log.exception("text engine step failed")
                self.core.abort_all(e)


def thread_sink() -> tuple[Sink, queue.SimpleQueue[TextDelta | BaseException]]:
    q: queue.SimpleQueue[TextDelta | BaseException] = queue.SimpleQueue()
    return q.put, q


class _Mailbox:
    """Deltas for one event loop's queues, handed over in bursts: a step's deltas for every
    request on that loop wake it once (one call_soon_threadsafe), not once per request, so a
    wide batch does not make the loop thread fight the engine thread for the GIL B times a step."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.lock = threading.Lock()
        self.items: list[tuple[asyncio.Queue[TextDelta | BaseException], TextDelta | BaseException]] = []

    def post(self, q: asyncio.Queue[TextDelta | BaseException], item: TextDelta | BaseException) -> None:
        with self.lock:
            self.items.append((q, item))
            if len(self.items) > 1:  # a flush is already scheduled and will take this one too
                return
        with contextlib.suppress(RuntimeError):  # the consumer's event loop is gone; so is the consumer
            self.loop.call_soon_threadsafe(self._flush)

    def _flush(self) -> None:
        with self.lock:
            items, self.items = self.items, []
        for q, item in items:
            q.put_nowait(item)


_mailboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Mailbox] = weakref.WeakKeyDictionary()


def async_sink() -> tuple[Sink, asyncio.Queue[TextDelta | BaseException]]:
    loop = asyncio.get_running_loop()
    box = _mailboxes.get(loop)
    if box is None:
        box = _mailboxes[loop] = _Mailbox(loop)
    q: asyncio.Queue[TextDelta | BaseException] = asyncio.Queue()
    return functools.partial(box.post, q), q


def _accept(item: TextDelta | BaseException, stats: RequestStats) -> TextDelta | None:
    """The delta to hand out, None to skip it; raises the request's error."""
    if isinstance(item, BaseException):
        raise item
    # Cancelled meanwhile: deltas still queued are not handed out; the engine's error follows once
    # the request has left the batch (so a caller that sees it knows decoding has stopped).
    return None if stats.state == "cancelled" else item


def pull(q: queue.SimpleQueue[TextDelta | BaseException], stats: RequestStats) -> Iterator[TextDelta]:
    while True:
        d = _accept(q.get(), stats)
        if d is not None:
            yield d
            if d.finished:
                return


async def apull(q: asyncio.Queue[TextDelta | BaseException], stats: RequestStats) -> AsyncIterator[TextDelta]:
    while True:
        d = _accept(await q.get(), stats)
        if d is not None:
            yield d
            if d.finished:
                return
