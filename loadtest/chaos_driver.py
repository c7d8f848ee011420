"""The chaos benchmark's driver: the open-loop SDK load and one fault per phase over the stack of
loadtest/chaos_stack.py, with its options (Options) and the phases it knows (ALL_PHASES);
loadtest/chaos.py is its CLI and report, loadtest/chaos_ledger.py the accounting of every call."""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import os
import random
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import grpc

from loadtest.chaos_ledger import (
    TEXT_KINDS,
    Call,
    JobView,
    PhaseResult,
    classify,
    references,
    summarize,
)

ALL_PHASES: dict[str, str] = {
    "baseline": "none",
    "replica": "kill -9 text replica",
    "dispatcher": "kill -9 dispatcher",
    "gateway": "kill -9 gateway",
    "redis": "Redis SIGTERM+start",
    "redis-kill": "Redis kill -9+start",
}
MIX = {"stream": 0.55, "unary": 0.2, "job": 0.2, "image": 0.05}  # image only with the image app
SABOTAGE = ("no-aof", "drop-jobs")
# The tiny model answers in ~0.1 s, so few jobs would be in flight when a fault lands. Part of the text
# calls therefore ask for one token per forward (D2F's tau_conf 1.0: nothing is confident enough to
# commit early, so each full block commits its single most confident token): ~10x the forwards and
# the chunks of the app's defaults, the same kind of answer, and still greedy (one text per prompt).
SLOW = {"tau_conf": 1.0}
_CODE_NAMES = {c.value[0]: c.name for c in grpc.StatusCode}


def log(msg: str) -> None:
    print(f"[chaos {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Options:
    phases: list[str] = field(default_factory=lambda: list(ALL_PHASES))
    duration_s: float = 20.0  # load per phase
    fault_at_s: float = 5.0
    min_in_flight: int = 3  # the fault waits (up to fault_wait_s) for this many calls in flight
    fault_wait_s: float = 5.0
    rate: float = 3.0  # SDK calls per second
    settle_s: float = 60.0
    grace_s: float = 60.0
    call_timeout_s: float = 120.0  # each SDK call's deadline (the job's deadline too)
    prompts: int = 24
    seed: int = 21
    images: bool = True
    slow_share: float = 0.5  # share of text calls decoded one token per forward (see SLOW)
    sabotage: str = ""  # "", no-aof, drop-jobs

    def __post_init__(self) -> None:
        unknown = [p for p in self.phases if p not in ALL_PHASES]
        if unknown or not self.phases:
            raise ValueError(f"unknown phase(s) {unknown}; choose from {list(ALL_PHASES)}")
        if not 0 <= self.fault_at_s < self.duration_s or self.rate <= 0:
            raise ValueError("need 0 <= fault_at_s < duration_s and rate > 0")
        if not 0 <= self.slow_share <= 1:
            raise ValueError("slow_share must be in [0, 1]")
        if self.sabotage not in ("", *SABOTAGE):
            raise ValueError(f"sabotage must be one of {SABOTAGE}")


# ---- the run ------------------------------------------------------------------------------------------------


class Chaos:
    """Drives the load through `stack` (loadtest.chaos_stack.ChaosStack), phase by phase, injects the
    faults and accounts for every call."""

    def __init__(self, stack: Any, opts: Options) -> None:
        from lab.worlds import arith

        self.stack, self.opts = stack, opts
        self.rng = random.Random(opts.seed)
        # Held-out problems (3 to 8 changes each, the world's range), a pool small enough that prompts repeat.
        self.prompts = [p.question for p in arith.problems("heldout", opts.prompts, seed=opts.seed)]
        self.calls: list[Call] = []
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self.handles: dict[int, Any] = {}  # call number -> its SDK stream (to read a job id mid-flight)
        self.t0 = time.monotonic()
        self.phases: list[PhaseResult] = []
        self.kinds = {k: w for k, w in MIX.items() if k != "image" or opts.images}
        self.warmup_keys: set[str] = set()
        self.run_id = secrets.token_hex(4)  # in every idempotency key: this run's jobs among the store's

    def now(self) -> float:
        return time.monotonic() - self.t0

    # ---- the SDK calls ----
    async def _stream(self, c: Call) -> None:
        stream = self.aclient.stream_text(c.prompt, idempotency_key=c.key, timeout=self.opts.call_timeout_s,
                                          **_params(c))
        self.handles[c.n] = stream
        total = 0
        async for chunk in stream:
            c.first_chunk = c.first_chunk or self.now()
            c.streamed += chunk.text
            c.chunks += 1
            total += chunk.token_count
            c.bad_totals += chunk.total_tokens != total
            total = chunk.total_tokens
        c.job_id = stream.job_id
        if stream.result is not None:
            c.result = stream.result.text

    def _unary(self, c: Call) -> tuple[str, str]:  # the sync client, in a thread of the pool
        r = self.client.generate_text(c.prompt, idempotency_key=c.key, timeout=self.opts.call_timeout_s,
                                      **_params(c))
        return r.job_id, r.text

    async def _job(self, c: Call) -> None:
        job = await self.aclient.submit_text_job(c.prompt, idempotency_key=c.key, timeout=self.opts.call_timeout_s,
                                                 **_params(c))
        c.job_id = job.id
        watch = self.aclient.watch_job(job.id, timeout=self.opts.call_timeout_s)
        total = 0
        async for ev in watch:
            kind = ev.WhichOneof("kind")
            if kind == "text_chunk":
                c.first_chunk = c.first_chunk or self.now()
                c.streamed += ev.text_chunk.text
                c.chunks += 1
                total += ev.text_chunk.token_count
                c.bad_totals += ev.text_chunk.total_tokens != total
                total = ev.text_chunk.total_tokens
            elif kind == "result":
                c.result = ev.result.text.text
            elif kind == "error":
                c.error, c.detail = _CODE_NAMES.get(ev.error.code, str(ev.error.code)), ev.error.message

    async def _image(self, c: Call) -> None:
        stream = self.aclient.stream_image(c.prompt, idempotency_key=c.key, timeout=self.opts.call_timeout_s)
        self.handles[c.n] = stream
        async for p in stream:
            c.first_chunk = c.first_chunk or self.now()
            c.progress.append(p.patches_done)
        c.job_id = stream.job_id
        if stream.result is not None:
            c.result = f"png {len(stream.result.png)} bytes"

    async def _run_call(self, c: Call) -> None:
        import tessera

        try:
            if c.kind == "unary":
                c.job_id, c.result = await asyncio.get_running_loop().run_in_executor(self.pool, self._unary, c)
            else:
                await {"stream": self._stream, "job": self._job, "image": self._image}[c.kind](c)
        except tessera.TesseraError as e:
            c.error, c.detail = e.code.name, e.message[:300]
        except asyncio.CancelledError:
            c.hung = True
        except Exception as e:  # a harness or SDK bug: keep the run going, count the call
            c.error, c.detail = f"CLIENT_{type(e).__name__}", str(e)[:300]
        finally:
            c.end = self.now() if not c.hung else None
            h = self.handles.pop(c.n, None)
            if h is not None and not c.job_id:
                c.job_id = h.job_id

    def _spawn(self, phase: str, kind: str) -> Call:
        prompt = (self.rng.choice(["a red circle on the left", "a blue square on the right",
                                   "a green triangle above a red circle"]) if kind == "image"
                  else self.rng.choice(self.prompts))
        slow = kind in TEXT_KINDS and self.rng.random() < self.opts.slow_share
        c = Call(len(self.calls), phase, kind, prompt, f"chaos-{self.run_id}-{secrets.token_hex(8)}", slow, self.now())
        self.calls.append(c)
        self.tasks[c.n] = asyncio.create_task(self._run_call(c))
        return c

    async def _load(self, phase: str) -> None:
        """Open loop: one call every 1/rate s for duration_s, whatever the system does."""
        start = time.monotonic()
        kinds, weights = list(self.kinds), list(self.kinds.values())
        i = 0
        while (at := start + i / self.opts.rate) < start + self.opts.duration_s:
            await asyncio.sleep(max(0.0, at - time.monotonic()))
            self._spawn(phase, self.rng.choices(kinds, weights)[0])
            i += 1

    async def _warm_up(self, timeout_s: float = 180.0) -> None:
        """One call of each kind until each succeeds (loads models, fills the gateway's catalog)."""
        import tessera

        deadline = time.monotonic() + timeout_s
        for kind in self.kinds:
            while True:
                c = Call(-1, "warmup", kind, self.prompts[0] if kind != "image" else "a red circle on the left",
                         f"chaos-{self.run_id}-warmup-{secrets.token_hex(8)}", False, self.now())
                self.warmup_keys.add(c.key)
                with contextlib.suppress(tessera.TesseraError):
                    await asyncio.wait_for(self._run_call(c), 60)
                if c.result is not None:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"warm-up {kind} call never succeeded: {c.error} {c.detail}")
                await asyncio.sleep(1)

    # ---- faults ----
    async def _fault(self, name: str) -> float | None:
        st = self.stack
        if name == "replica":
            return await self._kill_replica()
        if name == "dispatcher":
            took, i = await st.kill_dispatcher()
            log(f"killed dispatcher{i} (the one holding the most jobs)")
            return took
        if name == "gateway":
            return await st.kill_gateway()
        if name in ("redis", "redis-kill"):
            return await st.restart_redis(crash=name == "redis-kill")
        return None

    async def _kill_replica(self, timeout_s: float = 180.0) -> float:
        """kill -9 the text replica's process; returns seconds until Serve runs a new one (RUNNING)."""
        from loadtest.chaos_stack import alive_replicas, app_running

        before, source = await asyncio.to_thread(alive_replicas)
        if not before:
            raise RuntimeError("no ALIVE TextWorker replica to kill")
        victim_id, pid = sorted(before.items())[0]
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        log(f"killed text replica pid {pid} (actor {victim_id[:12]}..., found with {source})")
        while time.monotonic() - t0 < timeout_s:
            await asyncio.sleep(0.5)
            now, _ = await asyncio.to_thread(alive_replicas)
            if now and victim_id not in now and await asyncio.to_thread(app_running, "text"):
                return time.monotonic() - t0
        raise TimeoutError(f"Serve did not replace the killed text replica within {timeout_s:.0f}s")

    async def _drop_jobs(self, phase: str) -> None:
        """Sabotage: delete the records of this phase's jobs in flight (what a lost write would do)."""
        import redis.asyncio as aioredis

        def in_flight() -> list[str]:
            ids = []
            for c in self.calls:
                jid = c.job_id or (self.handles[c.n].job_id if c.n in self.handles else "")
                if c.phase == phase and c.end is None and jid:
                    ids.append(jid)
            return ids

        for _ in range(50):  # a job in flight whose id its client knows (a stream's, a submitted job's)
            if ids := in_flight():
                break
            await asyncio.sleep(0.1)
        r = aioredis.from_url(self.stack.redis.url)
        try:
            for jid in ids[:3]:
                await r.delete(f"{self.stack.prefix}job:{jid}", f"{self.stack.prefix}job:{jid}:events")
            log(f"sabotage: deleted the records of {len(ids[:3])} job(s) in flight")
        finally:
            await r.aclose()

    # ---- phases ----
    async def _phase(self, label: str, fault: str) -> PhaseResult:
        """Run one phase: load for duration_s; `fault` (a name of ALL_PHASES) lands at fault_at_s, or as
        soon after (up to fault_wait_s more) as min_in_flight calls are in flight, so it hits jobs."""
        await self.stack.ensure_up()
        res = PhaseResult(label, ALL_PHASES[fault], started_s=self.now())
        log(f"phase {label}: {self.opts.duration_s:.0f}s of load at {self.opts.rate:g}/s"
            + (f", fault ({res.fault}) at +{self.opts.fault_at_s:g}s" if fault != "baseline" else ""))
        first = len(self.calls)
        load = asyncio.create_task(self._load(label))
        try:
            if fault != "baseline" or self.opts.sabotage == "drop-jobs":
                await asyncio.sleep(self.opts.fault_at_s)
                until = time.monotonic() + self.opts.fault_wait_s
                while (sum(c.end is None for c in self.calls[first:]) < self.opts.min_in_flight
                       and time.monotonic() < until and not load.done()):
                    await asyncio.sleep(0.02)
                if self.opts.sabotage == "drop-jobs":
                    await self._drop_jobs(label)
                res.fault_s = self.now() if fault != "baseline" else None
                res.restart_s = await self._fault(fault)
                if res.restart_s is not None:
                    log(f"phase {label}: back after {res.restart_s:.1f}s")
            await load
        finally:
            load.cancel()
        mine = [self.tasks[c.n] for c in self.calls[first:] if not self.tasks[c.n].done()]
        if mine:
            await asyncio.wait(mine, timeout=self.opts.settle_s)
        left = sum(not self.tasks[c.n].done() for c in self.calls[first:])
        log(f"phase {label}: {len(self.calls) - first} calls" + (f", {left} still running" if left else ""))
        return res

    async def run(self) -> list[PhaseResult]:
        import tessera

        self.aclient = tessera.AsyncClient(self.stack.address, api_key=self.stack.api_key)
        self.client = tessera.Client(self.stack.address, api_key=self.stack.api_key)
        self.pool = concurrent.futures.ThreadPoolExecutor(64, thread_name_prefix="chaos-unary")
        try:
            await self.stack.wait_ready()
            log("warming up (one call of each kind)...")
            await self._warm_up()
            self.t0 = time.monotonic()
            seen: collections.Counter[str] = collections.Counter()
            for name in self.opts.phases:  # a phase named twice is labelled name#2 the second time
                seen[name] += 1
                self.phases.append(await self._phase(name if seen[name] == 1 else f"{name}#{seen[name]}", name))
            pending = [t for t in self.tasks.values() if not t.done()]
            if pending:
                log(f"{len(pending)} call(s) still running: grace period of {self.opts.grace_s:.0f}s")
                await asyncio.wait(pending, timeout=self.opts.grace_s)
            await self._stop_calls()
            await self.stack.ensure_up()  # the accounting reads the store through the gateway
            await self._account()
            return self.phases
        finally:
            await self._stop_calls()
            await self.aclient.close()
            self.client.close()  # cancels unary calls still in flight in the pool
            self.pool.shutdown(wait=False, cancel_futures=True)

    async def _stop_calls(self) -> None:
        left = [t for t in self.tasks.values() if not t.done()]
        for t in left:
            t.cancel()
        if left:
            await asyncio.wait(left, timeout=10)

    async def _account(self) -> None:
        """Read every job of this run's API key from the store (ListJobs; GetJob for job ids it missed),
        then classify each call."""
        import tessera

        jobs: dict[str, JobView] = {}
        token = ""
        while True:
            page, token = await self.aclient.list_jobs(100, token, timeout=30)
            for j in page:
                jobs[j.id] = JobView(j.id, j.idempotency_key, _state_name(j.state), j.attempts)
            if not token:
                break
        for c in self.calls:
            if c.job_id and c.job_id not in jobs:
                with contextlib.suppress(tessera.NotFoundError):
                    j = await self.aclient.get_job(c.job_id, timeout=30)
                    jobs[j.id] = JobView(j.id, j.idempotency_key, _state_name(j.state), j.attempts)
        by_key: dict[str, list[JobView]] = collections.defaultdict(list)
        for j in jobs.values():
            by_key[j.key].append(j)
        refs = references(self.calls)
        for c in self.calls:
            mine = list({j.id: j for j in [*by_key.get(c.key, []), *([jobs[c.job_id]] if c.job_id in jobs else [])]
                         }.values())
            c.acknowledged = bool(mine) or bool(c.job_id)
            c.job_state = mine[0].state if len(mine) == 1 else ""
            c.attempts = max((j.attempts for j in mine), default=0)
            c.outcome, c.why = classify(c, mine, refs.get((c.prompt, c.slow)))
        keys = {c.key for c in self.calls} | self.warmup_keys
        strays = [j for j in jobs.values() if j.key.startswith(f"chaos-{self.run_id}-") and j.key not in keys]
        if strays:  # would mean the accounting misses calls: say so loudly
            log(f"{len(strays)} job(s) of this run that no call made: {[j.id for j in strays][:5]}")
        for p in self.phases:
            summarize(p, [c for c in self.calls if c.phase == p.name])


def _params(c: Call) -> dict[str, Any]:
    return dict(SLOW) if c.slow else {}


def _state_name(state: int) -> str:
    from tessera.v1 import jobs_pb2

    return jobs_pb2.JobState.Name(state)
