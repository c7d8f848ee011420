"""The Redis job store shared by the gateway (submit, read, watch, cancel) and the dispatchers
(claim, stream chunks, finish).

Keys (prefix `tessera:` by default):
  queue:{service}        Stream of job ids (small text specs ride along); consumer group
                         `dispatchers`. Entries are deleted once the job ends, so XLEN minus
                         pending = jobs waiting.
  job:{id}               Hash: the job record (state, spec, attempts, tokens, result, error, ...).
  job:{id}:events        Stream of JobEvent protos; WatchJob / GenerateStream read it, so any
                         gateway replica can serve any job and clients resume by event id.
  job:{id}:final         Stream holding only the job's terminal event (result or error): a
                         unary call waits on it with one blocking read instead of one read per
                         event.
  idem:{owner}:{key}     Idempotency key -> job id.
  owner:{owner}          Sorted set of the owner's job ids by creation time (ListJobs).
  dlq:{service}          Dead-letter stream of jobs that exhausted their attempts.
  cancels                Pub/sub channel: job ids to stop now.
  done:{gateway}         Pub/sub channel of one gateway process: the final event of each job it
                         waits on (job field `notify`), so unary calls need no blocking read each.
Every state change goes through one Lua script, so a job ends exactly once and a dispatcher whose
job was reclaimed (its attempt number is stale: a fencing token) cannot write to it any more.
Round trips are the gateway's main cost, so each script does all of one step's work: claiming a
job returns its record, chunks are appended in batches, and ending a job also acknowledges and
deletes its queue entry.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp
from google.rpc import status_pb2
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from services.queue.kinds import JobKind
from services.queue.resp import FastRedis, FastScript
from services.queue.scripts import CHUNK, START, SUBMIT, TRANSITION
from tessera.v1 import jobs_pb2

TERMINAL = (jobs_pb2.JOB_STATE_SUCCEEDED, jobs_pb2.JOB_STATE_FAILED, jobs_pb2.JOB_STATE_CANCELLED)
GROUP = "dispatchers"
INLINE_SPEC_BYTES = 4096

class EventIdAfterEnd(ValueError):
    """A resume point past a running job's last event: no event of this job has (or will get) it."""


def stream_id(s: str) -> tuple[int, int]:
    """A Redis stream id ("ms-seq", or "ms" meaning ms-0) as a comparable pair."""
    ms, _, seq = s.partition("-")
    return int(ms), int(seq or 0)


def now_ms() -> int:
    return int(time.time() * 1000)


def new_job_id() -> str:
    # Time-ordered (ms, hex) then random: ids sort by creation time.
    return f"{now_ms():012x}{os.urandom(6).hex()}"


def _ts(ms: int) -> Timestamp:
    t = Timestamp()
    t.FromMilliseconds(ms)
    return t


def event_bytes(**kind: object) -> bytes:
    return jobs_pb2.JobEvent(**kind).SerializeToString()


@dataclass(slots=True)
class JobRecord:
    job: jobs_pb2.Job
    owner: str
    service: str
    deadline_ms: int
    tokens: int
    create_ms: int
    call_id: str = ""  # worker call id of the latest attempt (from claim: the attempt before it)
    request_id: str = ""  # the gateway request (x-request-id) that submitted it
    last_error: str = ""  # why the latest failed attempt failed (a retryable worker error)


class JobStore:
    def __init__(self, client: aioredis.Redis, prefix: str = "tessera:", ttl_s: int = 86400,
                 block_ms: int = 2000, fast: FastRedis | None = None) -> None:
        self.r, self.p, self.ttl_s, self.fast = client, prefix, ttl_s, fast
        # Blocking reads must return (empty) well before the client's socket timeout, or a job that
        # is quiet for that long (queued, a slow step, awaiting reclaim) reads as Redis being down.
        self.block_ms = block_ms
        # The scripts every job runs go over the pipelined connection when there is one (resp.py).
        script = (lambda text: FastScript(fast, text)) if fast is not None else client.register_script
        self._submit = script(SUBMIT)
        self._transition = script(TRANSITION)
        self._start = script(START)
        self._chunk = script(CHUNK)

    @classmethod
    def from_url(cls, url: str, socket_timeout_s: float = 5.0, **kw: object) -> JobStore:
        # One retry on a fresh connection: after a Redis restart the pooled connections are dead, and the
        # first command on each would fail although the server is back. Every command here may run twice
        # safely (reads; writes that are idempotent or fenced by the job's attempt number), except the
        # submit script, which runs on the pipelined client below and is not retried.
        client = aioredis.from_url(url, socket_timeout=socket_timeout_s, socket_connect_timeout=2,
                                   health_check_interval=10, retry=Retry(NoBackoff(), 1),
                                   retry_on_error=[aioredis.ConnectionError])
        fast = FastRedis(url, timeout_s=socket_timeout_s)
        return cls(client, block_ms=max(1, int(socket_timeout_s * 400)), fast=fast, **kw)  # type: ignore[arg-type]

    async def aclose(self) -> None:
        await self.r.aclose()
        if self.fast is not None:
            await self.fast.aclose()

    # ---- key names -----------------------------------------------------------------------------
    def queue_key(self, service: str) -> str:
        return f"{self.p}queue:{service}"

    def job_key(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}"

    def events_key(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}:events"

    def final_key(self, job_id: str) -> str:
        return f"{self.p}job:{job_id}:final"

    def dlq_key(self, service: str) -> str:
        return f"{self.p}dlq:{service}"

    @property
    def cancel_channel(self) -> str:
        return f"{self.p}cancels"

    # ---- gateway side --------------------------------------------------------------------------
    async def submit(self, owner: str, service: str, spec: jobs_pb2.JobSpec, idempotency_key: str = "",
                     deadline_ms: int = 0, job_id: str = "", notify: str = "",
                     request_id: str = "") -> tuple[str, bool]:
        """Enqueue a job; returns (job_id, created). The same owner + key returns the same job (then
        not `job_id`). `notify`: a pub/sub channel that gets the job's final event (see Completions)."""
        job_id = job_id or new_job_id()
        idem = f"{self.p}idem:{owner}:{idempotency_key}" if idempotency_key else ""
        data = spec.SerializeToString()
        # A small text spec also rides in the queue entry, so the dispatcher can call the worker
        # while its claim is in flight (Dispatcher._early_call) instead of after it.
        inline = data if JobKind.of(spec) is JobKind.TEXT and len(data) <= INLINE_SPEC_BYTES else b""
        fields = ["spec", data, "owner", owner, "service", service,
                  "idem_key", idempotency_key, "deadline_ms", deadline_ms, "notify", notify,
                  "request_id", request_id]
        created, jid = await self._submit(
            keys=[self.job_key(job_id), self.events_key(job_id), f"{self.p}owner:{owner}",
                  self.queue_key(service), idem],
            args=[job_id, self.ttl_s, now_ms(), f"{self.p}job:", event_bytes(state=jobs_pb2.JOB_STATE_QUEUED),
                  service, inline, deadline_ms, *fields])
        return (jid.decode() if isinstance(jid, bytes) else jid), bool(created)

    async def get(self, job_id: str) -> JobRecord | None:
        return _record(job_id, await self.r.hgetall(self.job_key(job_id)))

    async def list(self, owner: str, offset: int, limit: int) -> list[str]:
        ids = await self.r.zrevrange(f"{self.p}owner:{owner}", offset, offset + limit - 1)
        return [i.decode() for i in ids]

    async def final_event(self, job_id: str) -> tuple[str, jobs_pb2.JobEvent] | None:
        """The job's final event if it has ended (one non-blocking read), else None."""
        entries = await self.r.xrange(self.final_key(job_id), count=1)
        if not entries:
            return None
        eid, fields = entries[0]
        ev = jobs_pb2.JobEvent.FromString(fields[b"e"])
        ev.event_id = eid.decode()
        return ev.event_id, ev

    async def exists(self, job_id: str) -> bool:
        return bool(await self.r.exists(self.job_key(job_id)))

    async def events(self, job_id: str, after: str = "0-0", final_only: bool = False,
                     ) -> AsyncIterator[tuple[str, jobs_pb2.JobEvent]]:
        """Events after `after`, following the stream until the job's final event. With
        `final_only`, just that final event (one blocking read however many events came before).

        Resuming from the job's last event (or later) never waits for events that cannot come: an
        ended job yields its final event again (with the last event's id), and an id past the last
        event of a running job raises EventIdAfterEnd."""
        key, last = (self.final_key(job_id), "0-0") if final_only else (self.events_key(job_id), after or "0-0")
        if not final_only and last != "0-0":
            tail = await self.r.xrevrange(key, count=1)
            if not tail:
                return  # expired (or never existed): nothing to follow
            last_id = tail[0][0].decode()
            if stream_id(last) >= stream_id(last_id):
                final = await self.final_event(job_id)
                if final is not None:
                    final[1].event_id = last_id
                    yield last_id, final[1]
                    return
                if stream_id(last) > stream_id(last_id):
                    raise EventIdAfterEnd(f"{after} is after the job's last event ({last_id})")
        while True:
            resp = await self.r.xread({key: last}, count=256, block=self.block_ms)
            if not resp:
                if not await self.r.exists(self.job_key(job_id)):
                    return
                continue
            for eid, fields in resp[0][1]:
                last = eid.decode()
                ev = jobs_pb2.JobEvent.FromString(fields[b"e"])
                ev.event_id = last
                yield last, ev
                if ev.WhichOneof("kind") in ("result", "error"):
                    return

    async def past_events(self, job_id: str) -> list[jobs_pb2.JobEvent]:
        """Every event the job has recorded so far, oldest first (one read; no waiting for more)."""
        entries = await self.r.xrange(self.events_key(job_id))
        return [jobs_pb2.JobEvent.FromString(fields[b"e"]) for _, fields in entries]

    async def cancel(self, job_id: str, reason: str = "cancelled by the client") -> bool:
        err = status_pb2.Status(code=1, message=reason)  # grpc CANCELLED
        applied = await self.transition(job_id, (1, 2), jobs_pb2.JOB_STATE_CANCELLED,
                                        [event_bytes(state=jobs_pb2.JOB_STATE_CANCELLED), event_bytes(error=err)],
                                        error=err.SerializeToString())
        if applied:
            await self.r.publish(self.cancel_channel, job_id)
        return applied

    # ---- dispatcher side -----------------------------------------------------------------------
    async def transition(self, job_id: str, from_states: tuple[int, ...], to: int, events: list[bytes],
                         attempt: int | None = None, ack: tuple[str, str] | None = None, **fields: object) -> bool:
        """Compare-and-set the job's state; `ack` = (service, queue entry id) to retire with it."""
        service, entry_id = ack or ("", "")
        args: list[object] = [",".join(map(str, from_states)), "" if attempt is None else attempt, to, self.ttl_s,
                              entry_id, job_id, *events, "|", "update_ms", now_ms()]
        for k, v in fields.items():
            args += [k, v]
        keys = [self.job_key(job_id), self.events_key(job_id), self.final_key(job_id),
                self.queue_key(service) if service else self.queue_key("_")]
        return await self._transition(keys=keys, args=args) == 1

    async def claim(self, job_id: str, call_id: str = "") -> tuple[int, JobRecord | None]:
        """Start a dispatch attempt whose worker call will carry `call_id`: (attempt number, the job's
        record, whose call_id is the previous attempt's); attempt <= 0 when the job already ended (0)
        or is gone (-1)."""
        attempt, flat = await self._start(keys=[self.job_key(job_id), self.events_key(job_id)],
                                          args=[now_ms(), event_bytes(state=jobs_pb2.JOB_STATE_RUNNING), call_id])
        return int(attempt), _record(job_id, dict(zip(flat[::2], flat[1::2], strict=True)))

    async def start(self, job_id: str) -> int:
        return (await self.claim(job_id))[0]

    async def append_chunks(self, job_id: str, attempt: int, chunk_events: list[bytes], tokens: int,
                            progress: float) -> bool:
        return await self._chunk(keys=[self.job_key(job_id), self.events_key(job_id)],
                                 args=[attempt, tokens, progress, now_ms(), *chunk_events]) == 1

    async def append_chunk(self, job_id: str, attempt: int, chunk_event: bytes, tokens: int, progress: float) -> bool:
        return await self.append_chunks(job_id, attempt, [chunk_event], tokens, progress)

    async def succeed(self, job_id: str, attempt: int, result: jobs_pb2.JobResult,
                      ack: tuple[str, str] | None = None, chunk_events: list[bytes] | None = None,
                      tokens: int | None = None) -> bool:
        """End the job with its result; chunks not yet written go out in the same call."""
        data = result.SerializeToString()
        extra: dict[str, object] = {} if tokens is None else {"tokens": tokens}
        return await self.transition(job_id, (2,), jobs_pb2.JOB_STATE_SUCCEEDED,
                                     [*(chunk_events or []), event_bytes(state=jobs_pb2.JOB_STATE_SUCCEEDED),
                                      event_bytes(result=result)],
                                     attempt=attempt, ack=ack, result=data, progress=1.0, **extra)

    async def fail(self, job_id: str, code: int, message: str, attempt: int | None = None,
                   ack: tuple[str, str] | None = None) -> bool:
        err = status_pb2.Status(code=code, message=message)
        return await self.transition(job_id, (1, 2), jobs_pb2.JOB_STATE_FAILED,
                                     [event_bytes(state=jobs_pb2.JOB_STATE_FAILED), event_bytes(error=err)],
                                     attempt=attempt, ack=ack, error=err.SerializeToString())

    async def note_error(self, job_id: str, attempt: int, error: str) -> None:
        """Record why an attempt failed (a retry follows), so the job's final error can say it."""
        await self.r.hset(self.job_key(job_id), mapping={"last_error": error[:500], "last_error_attempt": attempt})

    async def ensure_group(self, service: str) -> None:
        try:
            await self.r.xgroup_create(self.queue_key(service), GROUP, id="0", mkstream=True)
        except aioredis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def blocking_connection(self) -> FastRedis | None:
        """A pipelined connection of its own for one consumer's blocking reads (a blocked command
        would hold up everything queued behind it on the shared one); None without a fast client."""
        return FastRedis(self.fast.url, self.fast.timeout_s) if self.fast is not None else None

    async def read_queue(self, service: str, consumer: str, count: int, block_ms: int,
                         conn: FastRedis | None = None) -> list[tuple[str, dict[bytes, bytes]]]:
        """New entries of the service's queue for `consumer` in the group, (entry id, fields) each;
        waits up to block_ms for the first. Over `conn` (blocking_connection) when given."""
        q = self.queue_key(service)
        if conn is None:
            resp = await self.r.xreadgroup(GROUP, consumer, {q: ">"}, count=count, block=block_ms)
            return [(eid.decode(), fields) for _, entries in resp or [] for eid, fields in entries]
        resp = await conn.execute("XREADGROUP", "GROUP", GROUP, consumer, "COUNT", count, "BLOCK", block_ms,
                                  "STREAMS", q, ">")
        return [(eid.decode(), dict(zip(flat[::2], flat[1::2], strict=True)))
                for _, entries in resp or [] for eid, flat in entries]

    async def done(self, service: str, entry_id: str) -> None:
        """Remove a finished job's queue entry (ack + delete keeps XLEN = live jobs)."""
        q = self.queue_key(service)
        async with self.r.pipeline(transaction=True) as pipe:
            pipe.xack(q, GROUP, entry_id)
            pipe.xdel(q, entry_id)
            await pipe.execute()

    async def dead_letter(self, service: str, entry_id: str, job_id: str, reason: str) -> None:
        await self.r.xadd(self.dlq_key(service), {"job_id": job_id, "reason": reason, "at_ms": now_ms()},
                          maxlen=100_000, approximate=True)
        await self.done(service, entry_id)

    async def requeue(self, service: str, job_id: str) -> None:
        """Queue the job again as a fresh entry (its attempt count carries over in the job record);
        the caller retires the old entry."""
        await self.r.xadd(self.queue_key(service), {"job_id": job_id, "service": service})

    async def heartbeat(self, service: str, consumer: str, entry_ids: list[str]) -> None:
        """Reset the idle time of `consumer`'s pending entries (XCLAIM JUSTID to itself), so no other
        dispatcher reclaims jobs that are still running."""
        await self.r.xclaim(self.queue_key(service), GROUP, consumer, 0, entry_ids, justid=True)

    async def hand_back(self, service: str, consumer: str, entry_ids: list[str], idle_ms: int) -> None:
        """Give up `consumer`'s pending entries without waiting out the claim timeout: mark them idle
        for `idle_ms` (XCLAIM ... IDLE), so the next autoclaim of another dispatcher takes them over,
        exactly as if this one had died, and resumes them from their events."""
        await self.r.xclaim(self.queue_key(service), GROUP, consumer, 0, entry_ids, idle=idle_ms, justid=True)

    async def autoclaim(self, service: str, consumer: str, min_idle_ms: int,
                        count: int) -> list[tuple[str, dict[bytes, bytes]]]:
        """Take over up to `count` entries pending longer than `min_idle_ms` (their dispatcher died):
        (entry id, fields) each. Entries deleted meanwhile come back without fields and are left out."""
        resp = await self.r.xautoclaim(self.queue_key(service), GROUP, consumer, min_idle_ms, "0-0", count=count)
        return [(eid.decode(), fields) for eid, fields in resp[1] if fields]

    async def cancelled_jobs(self) -> AsyncIterator[str]:
        """Ids of jobs cancelled from now on (the cancel channel), as they come; runs until the
        connection fails (then raises) or the caller stops iterating."""
        pubsub = self.r.pubsub()
        try:
            await pubsub.subscribe(self.cancel_channel)
            async for msg in pubsub.listen():
                if msg.get("type") == "message":
                    yield msg["data"].decode()
        finally:
            # Its connection is dead after a failure, or no longer wanted: let the pool drop it.
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    async def queue_stats(self, service: str) -> tuple[int, float]:
        """(jobs waiting, age in seconds of the oldest waiting job) of one service's queue: entries
        not yet delivered to a dispatcher (XLEN minus pending, since ended jobs' entries are deleted)."""
        q = self.queue_key(service)
        length = await self.r.xlen(q)
        if not length:
            return 0, 0.0
        groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
                  for g in await self.r.xinfo_groups(q)}
        g = groups.get(GROUP)
        last = (g["last-delivered-id"] if g else b"0-0")
        last = last.decode() if isinstance(last, bytes) else last
        pending = int(g["pending"]) if g else 0
        waiting = max(0, length - pending)
        if not waiting:
            return 0, 0.0
        first = await self.r.xrange(q, min=f"({last}", count=1)
        if not first:
            return waiting, 0.0
        ms = int(first[0][0].decode().split("-")[0])
        return waiting, max(0.0, (now_ms() - ms) / 1000)


def _record(job_id: str, h: dict[bytes, bytes]) -> JobRecord | None:
    """A job record from its hash (HGETALL), or None when the job does not exist."""
    if not h:
        return None
    g = {k.decode(): v for k, v in h.items()}
    job = jobs_pb2.Job(id=job_id, state=int(g["state"]), attempts=int(g.get("attempts", b"0")),
                       idempotency_key=g.get("idem_key", b"").decode(), progress=float(g.get("progress", 0)),
                       create_time=_ts(int(g["create_ms"])), update_time=_ts(int(g["update_ms"])))
    job.spec.ParseFromString(g.get("spec", b""))
    if g.get("result"):
        job.result.ParseFromString(g["result"])
    if g.get("error"):
        job.error.ParseFromString(g["error"])
    return JobRecord(job, g.get("owner", b"").decode(), g.get("service", b"").decode(),
                     int(g.get("deadline_ms", b"0")), int(g.get("tokens", b"0")), int(g["create_ms"]),
                     g.get("call", b"").decode(), g.get("request_id", b"").decode(),
                     g.get("last_error", b"").decode())
