"""Final events of the jobs this gateway process waits on, pushed to it over one pub/sub connection.

A unary call (Generate) used to hold a blocking XREAD on its job's `final` stream: one command and
one pooled connection per waiting call. Instead, the job records this process's channel
(`notify`), the job's final transition publishes its last event there (services/queue/jobstore.py,
_TRANSITION), and one listener task hands each event to the call waiting for it.

Pub/sub is fire-and-forget: a message published while the listener is reconnecting is lost. So a
waiter that has heard nothing for a while reads the job's `final` stream itself (non-blocking, on a
backing-off timer): a lost message costs a short delay, never a result.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

import redis.asyncio as aioredis

from services.queue.jobstore import JobStore
from tessera.v1 import jobs_pb2

log = logging.getLogger(__name__)
_REDIS_DOWN = (aioredis.ConnectionError, aioredis.TimeoutError, ConnectionError, OSError)


class Completions:
    def __init__(self, store: JobStore, first_poll_s: float = 0.5, max_poll_s: float = 2.0) -> None:
        self.store = store
        self.channel = f"{store.p}done:{os.getpid()}-{os.urandom(4).hex()}"
        self.first_poll_s, self.max_poll_s = first_poll_s, max_poll_s
        self._waiters: dict[str, asyncio.Future[tuple[str, jobs_pb2.JobEvent]]] = {}
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # subscribed; cleared while reconnecting

    def start(self) -> None:
        self._task = asyncio.create_task(self._listen())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def expect(self, job_id: str) -> None:
        """Register before submitting, so a job that ends at once is not missed."""
        self._waiters[job_id] = asyncio.get_running_loop().create_future()

    def forget(self, job_id: str) -> None:
        fut = self._waiters.pop(job_id, None)
        if fut is not None and not fut.done():
            fut.cancel()

    async def wait(self, job_id: str) -> tuple[str, jobs_pb2.JobEvent] | None:
        """The job's final (event id, event); None if the job no longer exists. Raises on Redis errors."""
        fut = self._waiters.get(job_id)
        if fut is None:
            raise KeyError(f"job {job_id} was not expected")
        try:
            poll_s = self.first_poll_s
            while True:
                await asyncio.wait((fut,), timeout=poll_s)  # no task, and the future survives a timeout
                if fut.done():
                    return fut.result()
                # No message yet: slow jobs land here, and so do messages lost while reconnecting.
                final = await self.store.final_event(job_id)
                if final is not None:
                    return final
                if not await self.store.exists(job_id):
                    return None
                poll_s = min(poll_s * 2, self.max_poll_s)
        finally:
            self.forget(job_id)

    def _deliver(self, data: bytes) -> None:
        job_id, entry_id, event = data.split(b"\n", 2)
        fut = self._waiters.get(job_id.decode())
        if fut is None or fut.done():
            return  # its caller went away (or it was already read from the stream)
        ev = jobs_pb2.JobEvent.FromString(event)
        ev.event_id = entry_id.decode()
        fut.set_result((ev.event_id, ev))

    async def _listen(self) -> None:
        # A subscription of its own on the store's pipelined client (resp.py): each message goes
        # straight from the socket to _deliver, without redis-py's pub/sub dispatch per message.
        fast = self.store.fast
        if fast is None:
            raise RuntimeError("Completions needs a JobStore made by JobStore.from_url (its pipelined client)")
        backoff = 0.1
        while True:
            sub = None
            try:
                sub = await fast.subscribe(self.channel, self._deliver)
                self.listening.set()
                backoff = 0.1
                await sub.closed  # raises when the connection goes
            except _REDIS_DOWN as e:
                log.warning("completions: Redis unavailable (%s); resubscribing in %.1fs", e, backoff)
            finally:
                self.listening.clear()
                if sub is not None:
                    sub.close()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 2.0)
