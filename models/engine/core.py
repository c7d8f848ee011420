"""The engine core: requests in, one batched step at a time, deltas out (vLLM's LLMEngine:
`add` a request, `step`, abort by marking it cancelled; `abort_all`).

A step: the scheduler picks the batch; every sequence's window goes into ONE forward (the runner);
one sampler call draws for all of them; each sequence's state commits its tokens and its output
writer turns the final ones into a delta for its sink. A batched step counts one forward for every
sequence in it. The lock guards the queues and the request flags only, never a forward: cancelling
or adding a request waits for no forward, and a request cancelled during a step is dropped before
the next one (its forward count stops there).
"""

from __future__ import annotations

import ctypes
import threading
import time

from models.engine.config import EngineConfig
from models.engine.methods import SeqDecoder, SoloSeq
from models.engine.request import DeadlineExceeded, DecodeCancelled
from models.engine.runner import ModelRunner
from models.engine.sampler import Draw, sample_batch
from models.engine.scheduler import Scheduler, Step
from models.engine.sequence import Sequence
from models.transformer import Transformer


class EngineCore:
    def __init__(self, model: Transformer, cfg: EngineConfig) -> None:
        self.model, self.cfg = model, cfg
        if model.embed.weight.device.type == "cpu":
            _keep_freed_memory()
        self.runner = ModelRunner(model, cfg)
        self.scheduler = Scheduler(cfg, self.runner.kv, model)
        self.lock = threading.Lock()
        self.steps = 0
        self.tokens_forwarded = 0  # window tokens of every step (the work the forwards did)

    @property
    def kv_bytes_per_token(self) -> int:
        return self.runner.kv.bytes_per_token

    def add(self, seq: Sequence) -> None:
        with self.lock:
            self.scheduler.add(seq)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def abort_all(self, error: BaseException) -> None:
        """Every queued and running request leaves now; its stream raises `error`."""
        with self.lock:
            sched = self.scheduler
            seqs = [*sched.waiting, *sched.running]
            sched.waiting.clear()
            for s in seqs:
                sched.finish(s)
                if s.stats.state == "running":
                    s.stats.state, s.stats.cancelled = "cancelled", True
                s.stats.ended = time.time()
        for s in seqs:
            s.sink(error)

    def step(self) -> None:
        with self.lock:
            plan = self.scheduler.schedule()
            for s in plan.batched:
                s.stats.forwards += 1
                s.stats.decoding = True
            for s in plan.solo:
                s.stats.decoding = True
        now = time.time()
        for s in plan.dropped:
            self._drop(s, now)
        for s in plan.finished:
            self._emit(s, [])
        try:
            if plan.batched:
                self._forward(plan)
            for s in plan.solo:
                self._solo(s)
        except Exception as e:  # the forward failed: every sequence in it fails with the error
            for s in [*plan.batched, *plan.solo]:
                if s.stats.state == "running":
                    s.stats.state = "failed"
                s.stats.ended = time.time()
                s.sink(e)
            with self.lock:
                for s in [*plan.batched, *plan.solo]:
                    self.scheduler.finish(s)
        finally:
            with self.lock:
                for s in [*plan.batched, *plan.solo]:
                    s.stats.decoding = False
                    # A request cancelled during the step stays until the next schedule drops it
                    # and tells its stream; a finished or failed one leaves now.
                    if s.stats.state in ("finished", "failed"):
                        self.scheduler.finish(s)
        self.steps += 1

    def _forward(self, plan: Step) -> None:
        key = self.runner.sort_key
        seqs = sorted(plan.batched, key=lambda s: key(s.window, s.pages))  # type: ignore[arg-type]
        windows = [s.window for s in seqs]
        self.tokens_forwarded += sum(len(w.tokens) for w in windows if w is not None)
        logits, counts = self.runner.run(windows, [s.pages for s in seqs])  # type: ignore[arg-type]
        draws, rows_of, at = [], [], 0
        for s, c in zip(seqs, counts, strict=True):
            st: SeqDecoder = s.state  # type: ignore[assignment]
            rows = logits[at : at + c]
            at += c
            rows_of.append(rows)
            draws.append(Draw(st.sampling_logits(rows), s.plan.params, s.generator, st.threshold))
        for s, rows, (tokens, over, conf) in zip(seqs, rows_of, sample_batch(draws), strict=True):
            st = s.state  # type: ignore[assignment]
            new = st.advance(tokens, over, conf, rows)
            if not st.finished:
                s.window = st.window()  # may finish it ("length") without another forward
            self._emit(s, new)

    def _solo(self, s: Sequence) -> None:
        st: SoloSeq = s.state  # type: ignore[assignment]
        ev = st.step()
        s.stats.forwards = ev.forwards  # its own decoder counts them
        self._emit(s, ev.token_ids)

    def _emit(self, s: Sequence, tokens: list[int]) -> None:
        if s.stats.state != "running":  # cancelled while this step ran: the consumer is told by _drop
            return
        st = s.state
        finished = st is None or _finished(st)
        delta = s.writer.push(tokens, finished, getattr(st, "finish_reason", None))
        if finished:
            s.stats.state, s.stats.ended = "finished", time.time()
        if delta is not None:
            if delta.text:
                s.mark_first()
            s.sink(delta)

    def _drop(self, s: Sequence, now: float) -> None:
        if s.stats.state == "running":  # expired (a cancelled one is marked by whoever cancelled it)
            s.stats.state = "cancelled"
            err: BaseException = DeadlineExceeded(s.stats.request_id)
        else:
            err = DecodeCancelled(s.stats.request_id)
        s.stats.cancelled, s.stats.ended = True, now
        s.sink(err)


def _finished(state: SeqDecoder | SoloSeq) -> bool:
    return bool(getattr(state, "finished", False))


_malloc_tuned = False


def _keep_freed_memory() -> None:
    """Stop glibc from returning the forward's large temporaries to the OS after every step.

    By default malloc serves blocks over 128 KiB (adaptively more) with fresh mmaps and unmaps them
    on free, so every forward page-faults its activations in again: measured here, a 64-sequence
    decode step spent half its time in those faults. Serving them from the heap, and keeping the
    heap's freed top, makes the steady state fault-free. Process-wide, done once per process.
    """
    global _malloc_tuned
    if _malloc_tuned:
        return
    _malloc_tuned = True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 32 << 20)  # the largest value glibc accepts on 64-bit
    libc.mallopt(m_trim_threshold, 1 << 30)
