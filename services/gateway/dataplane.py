"""The gateway's data plane: validated job operations over the Redis job store.

Knows nothing about gRPC servicers (that is `servicers.py`); raises `RpcError` for the protocol
layer to turn into statuses. Redis being down becomes UNAVAILABLE; redis-py reconnects by itself
on the next call, so the gateway recovers as soon as Redis is back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import grpc
import redis.asyncio as aioredis
from google.rpc import status_pb2

from services.common.logs import event
from services.common.metrics import Metrics
from services.gateway.catalog import Catalog
from services.gateway.completions import Completions
from services.gateway.config import GatewayConfig
from services.gateway.requests import current_request_id
from services.gateway.rpc_errors import RpcError, status_code_of, unavailable
from services.gateway.validation import (
    check,
    check_job_id,
    check_text,
    edit_request_violations,
    image_request_violations,
    understanding_violations,
)
from services.queue.jobstore import TERMINAL, EventIdAfterEnd, JobStore, new_job_id, now_ms
from services.queue.kinds import JobKind
from tessera.v1 import jobs_pb2

T = TypeVar("T")
log = logging.getLogger("tessera.gateway")
_REDIS_ERRORS = (aioredis.ConnectionError, aioredis.TimeoutError, ConnectionError, OSError)


@dataclass(frozen=True, slots=True)
class KindRules:
    """What the gateway checks and fixes in one kind of job before it is enqueued."""

    validate: Callable[[Any, GatewayConfig, str], None]  # (the kind's request, config, field) -> RpcError if bad
    models: Callable[[GatewayConfig], list[str]]  # the models a request may name; the first is the default
    seeded: bool  # has params.seed, fixed here so every attempt makes the same output
    in_thread: bool  # validation decodes images: run it off the event loop


# One entry per kind of job (services/queue/kinds.py); test_kinds checks that none is missing.
RULES: dict[JobKind, KindRules] = {
    JobKind.TEXT: KindRules(lambda req, cfg, field: check_text(req, cfg.text, field), lambda cfg: cfg.text.models,
                            seeded=True, in_thread=False),
    JobKind.IMAGE: KindRules(lambda req, cfg, field: check(image_request_violations(req, cfg.images, field)),
                             lambda cfg: cfg.images.models, seeded=True, in_thread=True),
    JobKind.EDIT: KindRules(lambda req, cfg, field: check(edit_request_violations(req, cfg.images, field)),
                            lambda cfg: cfg.images.models, seeded=True, in_thread=True),
    JobKind.UNDERSTAND: KindRules(
        lambda req, cfg, field: check(understanding_violations(req, cfg.understanding, cfg.images, field)),
        lambda cfg: cfg.understanding.models, seeded=False, in_thread=True),
}


async def guarded(op: Callable[[], Awaitable[T]]) -> T:
    try:
        return await op()
    except _REDIS_ERRORS as e:
        raise unavailable("the job queue (Redis)", e) from e


class DataPlane:
    def __init__(self, cfg: GatewayConfig, store: JobStore, metrics: Metrics,
                 completions: Completions | None = None, catalog: Catalog | None = None) -> None:
        self.cfg, self.store, self.metrics, self.completions = cfg, store, metrics, completions
        self.catalog = catalog
        self.stopping = False  # set when the gateway shuts down: closed calls then leave their jobs running

    def _prepare(self, kind: JobKind, spec: jobs_pb2.JobSpec, field: str) -> jobs_pb2.JobSpec:
        """Validate a spec (field violations name `field`) and fix what every attempt must agree on:
        the default model and the sampling seed."""
        rules = RULES[kind]
        rules.validate(getattr(spec, kind), self.cfg, field)
        out = jobs_pb2.JobSpec()
        out.CopyFrom(spec)
        req = getattr(out, kind)
        if not req.model:
            req.model = rules.models(self.cfg)[0]
        if rules.seeded and not req.params.HasField("seed"):
            # A fixed seed makes every attempt of this job produce the same output, so a job
            # reclaimed from a dead dispatcher resumes where it stopped, without duplicates.
            req.params.seed = int.from_bytes(os.urandom(4), "little")
        return out

    async def submit(self, owner: str, spec: jobs_pb2.JobSpec, idempotency_key: str = "",
                     deadline_s: float | None = None, field: str = "", job_id: str = "",
                     notify: str = "") -> tuple[str, bool]:
        """Validate and enqueue on the kind's queue; `field` names the request in field violations
        (default `spec.<kind>`)."""
        name = spec.WhichOneof("kind")
        kind = JobKind.named(name)
        if kind is None or kind not in RULES:
            problem = f"kind {name!r} is not served" if name else "is empty"
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, f"job spec {problem}: set one of its kinds",
                           violations=[("spec", f"one of [{', '.join(RULES)}] must be set")])
        if len(idempotency_key) > 128:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "idempotency_key is too long",
                           violations=[("idempotency_key", "at most 128 characters")])
        field = field or f"spec.{kind}"
        spec = (await asyncio.to_thread(self._prepare, kind, spec, field) if RULES[kind].in_thread
                else self._prepare(kind, spec, field))
        if kind is JobKind.TEXT and self.catalog is not None:  # token limits, as the worker counts them
            req = spec.text
            check(await self.catalog.text_violations(req.model, req.prompt, req.params.max_tokens, field,
                                                     req.params.raw_prompt))
        service = kind.service
        deadline_ms = now_ms() + int(deadline_s * 1000) if deadline_s else 0
        request_id = current_request_id()
        job_id, created = await guarded(lambda: self.store.submit(owner, service, spec, idempotency_key, deadline_ms,
                                                                  job_id, notify, request_id))
        if created:
            self.metrics.submitted.labels(service).inc()
        event(log, "job.submitted" if created else "job.resubmitted", job_id=job_id, request_id=request_id,
              owner=owner, kind=kind.value, idempotency_key=idempotency_key)
        return job_id, created

    async def submit_and_wait(self, owner: str, spec: jobs_pb2.JobSpec, idempotency_key: str = "",
                              deadline_s: float | None = None, field: str = "",
                              on_submitted: Callable[[str], None] | None = None) -> tuple[str, jobs_pb2.JobEvent]:
        """Submit, then wait for the job's final event (result or error) without streaming the rest:
        pushed to this process when it can be (Completions), else one blocking read."""
        if self.completions is None or not self.completions.listening.is_set():
            job_id, _ = await self.submit(owner, spec, idempotency_key, deadline_s, field)
            return job_id, await self._final_by_read(owner, job_id, on_submitted)
        job_id = new_job_id()
        self.completions.expect(job_id)
        try:
            jid, _ = await self.submit(owner, spec, idempotency_key, deadline_s, field, job_id,
                                       self.completions.channel)
        except BaseException:
            self.completions.forget(job_id)
            raise
        if jid != job_id:  # an earlier call's job (same idempotency key): it notifies that call, not this one
            self.completions.forget(job_id)
            return jid, await self._final_by_read(owner, jid, on_submitted)
        if on_submitted is not None:
            on_submitted(jid)
        final = await guarded(lambda: self.completions.wait(jid))  # type: ignore[union-attr]
        if final is None:
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"job {jid} expired before it ended", reason="JOB_NOT_FOUND")
        return jid, final[1]

    async def _final_by_read(self, owner: str, job_id: str,
                             on_submitted: Callable[[str], None] | None) -> jobs_pb2.JobEvent:
        if on_submitted is not None:
            on_submitted(job_id)
        async for ev in self.watch(owner, job_id, check_owner=False, final_only=True):
            return ev
        raise RpcError(grpc.StatusCode.NOT_FOUND, f"job {job_id} expired before it ended", reason="JOB_NOT_FOUND")

    async def get(self, owner: str, job_id: str) -> jobs_pb2.Job:
        check_job_id(job_id)
        rec = await guarded(lambda: self.store.get(job_id))
        if rec is None or rec.owner != owner:  # other owners' jobs do not exist for this caller
            raise RpcError(grpc.StatusCode.NOT_FOUND, f"job {job_id} not found (or expired)", reason="JOB_NOT_FOUND")
        return rec.job

    async def watch(self, owner: str, job_id: str, after: str = "", check_owner: bool = True,
                    final_only: bool = False) -> AsyncIterator[jobs_pb2.JobEvent]:
        """The job's events from `after` on, until its result or error; with `final_only` just
        that last event (what a unary call needs, in one blocking read)."""
        if check_owner:  # skipped for a job this call just submitted itself
            await self.get(owner, job_id)
        if after and not _valid_stream_id(after):
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "after_event_id is not an event id",
                           violations=[("after_event_id", "must be an event_id received from this job")])
        it = self.store.events(job_id, after or "0-0", final_only=final_only).__aiter__()
        ended = False
        while True:
            try:
                _, ev = await it.__anext__()
            except StopAsyncIteration:
                if ended:
                    return
                # The store stops before the job's result or error only when the job is gone (expired, or
                # lost with Redis's data): say so, as Generate does. A stream that ended OK without its
                # job's end would read as a success to the caller.
                raise RpcError(grpc.StatusCode.NOT_FOUND, f"job {job_id} expired before it ended",
                               reason="JOB_NOT_FOUND") from None
            except EventIdAfterEnd as e:
                raise RpcError(grpc.StatusCode.OUT_OF_RANGE, "after_event_id is after the job's last event",
                               violations=[("after_event_id", str(e))]) from e
            except _REDIS_ERRORS as e:
                raise unavailable("the job queue (Redis)", e) from e
            ended = ev.WhichOneof("kind") in ("result", "error")
            yield ev

    async def cancel(self, owner: str, job_id: str) -> jobs_pb2.Job:
        job = await self.get(owner, job_id)
        if job.state not in TERMINAL:
            await guarded(lambda: self.store.cancel(job_id))
            job = await self.get(owner, job_id)
        return job

    async def list(self, owner: str, page_size: int, page_token: str) -> tuple[list[jobs_pb2.Job], str]:
        if not 0 <= page_size <= 100:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "page_size must be in [0, 100]",
                           violations=[("page_size", "must be in [0, 100] (0 = 20)")])
        # Tokens are offsets this gateway handed out: at most 9 ASCII digits (an owner's jobs expire long
        # before 10^9 of them), so nothing else reaches Redis as a range bound.
        token = page_token or "0"
        offset = int(token) if re.fullmatch(r"[0-9]{1,9}", token, re.ASCII) else -1
        if offset < 0:
            raise RpcError(grpc.StatusCode.INVALID_ARGUMENT, "bad page_token",
                           violations=[("page_token", "must come from a previous ListJobs response")])
        size = page_size or 20
        ids = await guarded(lambda: self.store.list(owner, offset, size + 1))
        jobs = []
        for jid in ids[:size]:
            rec = await guarded(lambda jid=jid: self.store.get(jid))
            if rec is not None:
                jobs.append(rec.job)
        return jobs, (str(offset + size) if len(ids) > size else "")


_STREAM_ID = re.compile(r"[0-9]{1,20}(-[0-9]{1,20})?", re.ASCII)


def _valid_stream_id(s: str) -> bool:
    """A Redis stream id: both parts are unsigned 64-bit numbers (Redis refuses anything else)."""
    return _STREAM_ID.fullmatch(s) is not None and all(int(p) < 1 << 64 for p in s.split("-"))


def error_from_status(st: status_pb2.Status) -> RpcError:
    return RpcError(status_code_of(st.code), st.message)
