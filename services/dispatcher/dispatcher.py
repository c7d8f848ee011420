"""The dispatcher: moves jobs from a service's Redis queue to its workers and back.

One Dispatcher runs one queue (text, image or understanding) with its own window, so slow image jobs
never hold back text; a dispatcher process runs one per service (`dispatch_all`). What one attempt
does per kind of job lives in `runners.py`.

- Consumes `queue:{service}` in the `dispatchers` consumer group, at most `max_in_flight` jobs
  at a time (a bounded window: the queue, not the worker, absorbs bursts).
- For each job: claims an attempt (the attempt number is a fencing token), forwards it to the
  worker over gRPC (Ray Serve's proxy), appends each chunk to the job's event stream, and ends
  the job exactly once (Lua compare-and-set).
- Heartbeats its pending entries (XCLAIM JUSTID resets their idle time); another dispatcher
  reclaims entries idle longer than `claim_idle_ms` (XAUTOCLAIM) and resumes the job, skipping
  the tokens (or image patches) already streamed (the gateway fixed the seed, so every attempt
  yields the same output). Reclaim comes before intake: whenever a slot is free and a reclaim
  period (claim_idle_ms / 3) has passed since the last look, taken-over jobs fill it first, so a
  dead dispatcher's jobs resume within claim_idle_ms + one period even under full load (new jobs
  would otherwise refill every slot first and starve them). Jobs that exhaust `max_attempts` go
  to the dead-letter stream.
- Cancellation (pub/sub) and deadlines cancel the worker call, which stops the decoding loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from dataclasses import dataclass, field

import grpc
import redis.asyncio as aioredis

from services.common.aio import cancel_all
from services.common.logs import event
from services.common.metrics import Metrics
from services.dispatcher.config import DispatcherConfig
from services.dispatcher.runners import RUNNERS, Attempt
from services.dispatcher.worker_client import StartedCall, WorkerClient, new_call_id
from services.queue.jobstore import TERMINAL, JobStore, now_ms
from services.queue.kinds import JobKind, Service
from tessera.v1 import jobs_pb2

log = logging.getLogger(__name__)
_REDIS_DOWN = (aioredis.ConnectionError, aioredis.TimeoutError, ConnectionError, OSError)


@dataclass(slots=True)
class _Running:
    task: asyncio.Task[None]
    entry_id: str


@dataclass
class Dispatcher:
    store: JobStore
    worker: WorkerClient
    cfg: DispatcherConfig
    metrics: Metrics
    service: Service = Service.TEXT  # a Service or its name
    name: str = field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{os.urandom(3).hex()}")
    running: dict[str, _Running] = field(default_factory=dict)
    _slot_free: asyncio.Event = field(default_factory=asyncio.Event)
    _loops: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _next: dict[str, tuple[str, dict[bytes, bytes]]] = field(default_factory=dict)  # see _launch

    def __post_init__(self) -> None:
        self.service = Service(self.service)  # a name no service has fails here, not at the first job

    async def run(self) -> None:
        """Dispatch until cancelled; survives Redis outages (retries with backoff)."""
        self._loops = {"consume": asyncio.create_task(self._consume()),
                       "heartbeat": asyncio.create_task(self._heartbeat_loop()),
                       "cancel": asyncio.create_task(self._cancel_listener())}
        try:
            # return_exceptions: drain() cancels the loops one by one; run() then ends when all have. A loop
            # that failed otherwise still fails run().
            for result in await asyncio.gather(*self._loops.values(), return_exceptions=True):
                if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                    raise result
        finally:
            await cancel_all([*self._loops.values(), *(r.task for r in self.running.values())])

    async def drain(self, grace_s: float) -> int:
        """Stop for a scale-in without delaying anybody's job: take no new jobs, let the running ones
        finish for up to `grace_s` (still heartbeating them), then stop the rest and hand their queue
        entries back, so another dispatcher resumes them at its next reclaim instead of after
        claim_idle_ms. Returns how many were handed back."""
        for name in ("consume", "cancel"):
            self._loops[name].cancel()
        if self.running and grace_s > 0:
            await asyncio.wait([r.task for r in self.running.values()], timeout=grace_s)
        self._loops["heartbeat"].cancel()  # a heartbeat after the hand-back would take it back
        left = list(self.running.values())
        for r in left:
            r.task.cancel()  # cancels the worker call; what it streamed stays in the job's events
        await asyncio.gather(*(r.task for r in left), return_exceptions=True)
        if left:
            with contextlib.suppress(*_REDIS_DOWN):  # Redis gone: the claims time out instead
                await self.store.hand_back(self.service, self.name, [r.entry_id for r in left],
                                           self.cfg.claim_idle_ms)
            log.info("dispatcher %s: handed %d running job(s) back", self.name, len(left))
        return len(left)

    # ---- intake ------------------------------------------------------------------------------------
    async def _consume(self) -> None:
        backoff = 0.1
        conn = self.store.blocking_connection()  # this consumer's own: its reads block
        next_reclaim = 0.0  # monotonic time of the next look for jobs of dead dispatchers
        period = self.cfg.claim_idle_ms / 3000
        try:
            while True:
                try:
                    await self.store.ensure_group(self.service)
                    while True:
                        free = self.cfg.max_in_flight - len(self.running)
                        if free <= 0:  # window full: wake when a job ends, not on a timer
                            self._slot_free.clear()
                            await self._slot_free.wait()
                            continue
                        if time.monotonic() >= next_reclaim:  # taken-over jobs before new ones
                            next_reclaim = time.monotonic() + period
                            free -= self._reclaim(await self.store.autoclaim(
                                self.service, self.name, self.cfg.claim_idle_ms, free))
                            if free <= 0:
                                continue
                        # Blocks at most until the next reclaim is due, so an idle dispatcher still looks.
                        block_ms = max(1, min(1000, self.store.block_ms,
                                              int((next_reclaim - time.monotonic()) * 1000)))
                        for eid, fields in await self.store.read_queue(self.service, self.name, free, block_ms,
                                                                       conn):
                            self._launch(eid, fields[b"job_id"].decode(), fields)
                        backoff = 0.1
                except _REDIS_DOWN as e:
                    log.warning("dispatcher %s: Redis unavailable (%s); retrying in %.1fs", self.name, e, backoff)
                except aioredis.ResponseError as e:  # NOGROUP after a Redis restart: recreate the group
                    log.warning("dispatcher %s: %s", self.name, e)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        finally:
            if conn is not None:
                await conn.aclose()

    def _reclaim(self, entries: list[tuple[str, dict[bytes, bytes]]]) -> int:
        """Resume jobs taken over from dead dispatchers; returns how many were launched."""
        for eid, fields in entries:
            log.warning("dispatcher %s: reclaimed job %s", self.name, fields[b"job_id"].decode())
            self._launch(eid, fields[b"job_id"].decode())
        return len(entries)

    def _launch(self, entry_id: str, job_id: str, fields: dict[bytes, bytes] | None = None) -> None:
        if job_id in self.running:
            # The job's next entry (a retry requeues it) read while its previous attempt is still winding
            # down: start it when that one ends. Dropped, it would sit pending until a reclaim found it.
            self._next[job_id] = (entry_id, fields or {})
            return
        task = asyncio.create_task(self._process(entry_id, job_id, fields or {}))
        self.running[job_id] = _Running(task, entry_id)
        self.metrics.in_flight.labels(self.service).set(len(self.running))
        task.add_done_callback(lambda _t: self._forget(job_id))

    def _forget(self, job_id: str) -> None:
        self.running.pop(job_id, None)
        if (nxt := self._next.pop(job_id, None)) is not None:
            self._launch(nxt[0], job_id, nxt[1])
        self._slot_free.set()
        self.metrics.in_flight.labels(self.service).set(len(self.running))

    # ---- one job ------------------------------------------------------------------------------------
    async def _process(self, entry_id: str, job_id: str, fields: dict[bytes, bytes]) -> None:
        early = self._early_call(job_id, fields)
        try:
            await self._process_job(entry_id, job_id, early)
        except asyncio.CancelledError:
            raise
        except _REDIS_DOWN as e:
            # The entry stays pending; once Redis is back the reclaimer retries it.
            log.warning("job %s: Redis went away mid-job (%s); it will be reclaimed", job_id, e)
        except Exception:
            log.exception("job %s: unexpected dispatcher error", job_id)
        finally:
            if early is not None:
                early.cancel()  # a no-op once the runner read it to the end

    def _early_call(self, job_id: str, fields: dict[bytes, bytes]) -> StartedCall | None:
        """A fresh text job's worker call, started from the spec in its queue entry while the claim
        is in flight: the claim's round trip leaves the critical path. The claim still decides: a
        job that ended meanwhile, or is not on its first attempt, drops the call."""
        data = fields.get(b"spec")  # only text specs are inlined (JobStore.submit)
        if not data:
            return None
        spec = jobs_pb2.JobSpec.FromString(data)
        if JobKind.of(spec) is not JobKind.TEXT:
            return None
        timeout = None
        if deadline_ms := int(fields.get(b"deadline_ms", b"0")):
            timeout = (deadline_ms - now_ms()) / 1000
            if timeout <= 0:
                return None
        return self.worker.start_generate(job_id, spec.text, 0, timeout)

    async def _process_job(self, entry_id: str, job_id: str, early: StartedCall | None = None) -> None:
        call_id = early.call_id if early is not None else new_call_id()
        attempt, rec = await self.store.claim(job_id, call_id)
        if early is not None and (attempt != 1 or rec is None or rec.tokens):
            early.cancel()
            early = None
            call_id = new_call_id()  # never reuse a cancelled call's id (the record keeps the old one)
        if attempt > 1 and rec is not None and rec.call_id:
            # The previous attempt's call may still run: its dispatcher died, and Serve's proxy can
            # lose the disconnect. Stop it; this attempt resumes where its events stopped.
            self.worker.cancel_on_worker(rec.call_id, job_id)
        if attempt <= 0 or rec is None:  # ended (e.g. cancelled while queued) or expired
            await self.store.done(self.service, entry_id)
            return
        if attempt > self.cfg.max_attempts:
            cause = f"; the last: {rec.last_error}" if rec.last_error else ""
            await self.store.fail(job_id, grpc.StatusCode.ABORTED.value[0],
                                  f"job failed after {self.cfg.max_attempts} dispatch attempts{cause}")
            event(log, "job.dead_lettered", logging.WARNING, job_id=job_id, request_id=rec.request_id,
                  attempts=attempt - 1, cause=rec.last_error)
            await self.store.dead_letter(self.service, entry_id, job_id, f"attempts exhausted ({attempt - 1})")
            self.metrics.dead_letters.labels(self.service).inc()
            self.metrics.jobs.labels(self.service, "FAILED").inc()
            return
        if attempt > 1:
            self.metrics.attempts.labels(self.service).inc()
        else:
            self.metrics.queue_wait.labels(self.service).observe((now_ms() - rec.create_ms) / 1000)
        timeout = None
        if rec.deadline_ms:
            timeout = (rec.deadline_ms - now_ms()) / 1000
            if timeout <= 0:
                await self._end_failed(job_id, attempt, grpc.StatusCode.DEADLINE_EXCEEDED,
                                       "the job's deadline passed before it could run", entry_id)
                return
        kind = JobKind.of(rec.job.spec)
        runner = RUNNERS.get(kind) if kind is not None else None
        if kind is None or runner is None or kind.service != self.service:
            name = rec.job.spec.WhichOneof("kind") or "empty"
            await self._end_failed(job_id, attempt, grpc.StatusCode.INVALID_ARGUMENT,
                                   f"a {name} job cannot run on the {self.service} queue", entry_id)
            return
        a = Attempt(self.store, self.metrics, self.worker, self.service, job_id, attempt, rec, timeout, entry_id,
                    self.cfg.chunk_linger_ms / 1000, early.stream if early is not None else None, call_id)
        outcome = await runner(a)
        event(log, f"job.attempt_{outcome}", logging.WARNING if outcome == "retry" else logging.INFO,
              job_id=job_id, request_id=rec.request_id, call_id=call_id, attempt=attempt, service=self.service,
              cause=a.error)
        if outcome in ("ok", "failed"):  # the final write retired the queue entry too
            return
        if outcome == "retry":
            await self.store.note_error(job_id, attempt, a.error)  # the job's final error names it
            await asyncio.sleep(self.cfg.retry_backoff_ms / 1000)
            await self.store.requeue(self.service, job_id)
        elif outcome == "gone":
            # Cancelled (ack it), or another dispatcher took the job over (its entry now: leave it).
            now = await self.store.get(job_id)
            if now is not None and now.job.state not in TERMINAL:
                return
        await self.store.done(self.service, entry_id)

    async def _end_failed(self, job_id: str, attempt: int, code: grpc.StatusCode, message: str,
                          entry_id: str) -> None:
        if await self.store.fail(job_id, code.value[0], message, attempt=attempt, ack=(self.service, entry_id)):
            self.metrics.jobs.labels(self.service, "FAILED").inc()
        else:  # ended meanwhile (e.g. cancelled): the entry is still ours to retire
            await self.store.done(self.service, entry_id)

    # ---- liveness, recovery, cancellation ------------------------------------------------------------
    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.heartbeat_ms / 1000)
            ids = [r.entry_id for r in self.running.values()]
            if ids:
                with contextlib.suppress(*_REDIS_DOWN, aioredis.ResponseError):
                    await self.store.heartbeat(self.service, self.name, ids)

    async def _cancel_listener(self) -> None:
        while True:
            try:
                async with contextlib.aclosing(self.store.cancelled_jobs()) as cancelled:
                    async for job_id in cancelled:
                        running = self.running.get(job_id)
                        if running is not None:
                            running.task.cancel()  # cancels the worker call -> decoding stops
                            with contextlib.suppress(asyncio.CancelledError, Exception):
                                await running.task
                            with contextlib.suppress(*_REDIS_DOWN):
                                await self.store.done(self.service, running.entry_id)
                            self.metrics.jobs.labels(self.service, "CANCELLED").inc()
            except _REDIS_DOWN:
                await asyncio.sleep(1.0)


def worker_clients(cfg: DispatcherConfig) -> dict[str, WorkerClient]:
    """A worker client per dispatched service, for its Serve application."""
    return {svc: WorkerClient(cfg.worker_address, app) for svc, app in cfg.applications.items()}


async def dispatch_all(store: JobStore, cfg: DispatcherConfig, metrics: Metrics,
                       workers: dict[str, WorkerClient] | None = None, stop: asyncio.Event | None = None,
                       grace_s: float = 0.0) -> None:
    """One Dispatcher per configured service (its own window and worker client); runs until cancelled,
    or until `stop` is set, then drains (Dispatcher.drain) within `grace_s`. Clients passed in stay
    open (their owner closes them); the ones made here are closed here."""
    own = workers is None
    clients = worker_clients(cfg) if workers is None else workers
    dispatchers = [Dispatcher(store, w, cfg, metrics, svc) for svc, w in clients.items()]
    runs = [asyncio.create_task(d.run()) for d in dispatchers]
    try:
        if stop is None:
            await asyncio.gather(*runs)
        else:
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([*runs, stopped], return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if stop.is_set():
                await asyncio.gather(*(d.drain(grace_s) for d in dispatchers))
            await asyncio.gather(*runs)
    finally:
        await cancel_all(runs)
        if own:
            for w in clients.values():
                await w.close()
