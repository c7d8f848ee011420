"""The scheduler: which sequences share the next forward (continuous batching, as in nano-vllm).

Waiting requests are admitted between steps while the batch has room (max_num_seqs), the step's
token budget allows their first window (a prompt may share a step with other sequences' decode
windows) and the KV pool has pages for it. Running sequences grow their KV as they decode; when the
pool runs short, the newest running sequence is preempted: its pages are freed and it goes back to
the front of the queue, to decode again from its prompt when readmitted (recompute; the tokens it
already streamed are not sent twice, models.engine.output). Cancelled and expired requests leave
before the next step. The scheduler only decides; the engine core runs the step.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

from models.engine.config import EngineConfig
from models.engine.methods import D2FSeq, Lean
from models.engine.sequence import Sequence
from models.kv_cache import PagedKVCache
from models.transformer import Transformer


@dataclass(slots=True)
class Step:
    batched: list[Sequence] = field(default_factory=list)  # share one forward
    solo: list[Sequence] = field(default_factory=list)  # run one decoder event each (vanilla)
    dropped: list[Sequence] = field(default_factory=list)  # cancelled or expired: to be told and freed
    finished: list[Sequence] = field(default_factory=list)  # finished without another forward


class Scheduler:
    def __init__(self, cfg: EngineConfig, kv: PagedKVCache, model: Transformer) -> None:
        self.cfg, self.kv, self.model = cfg, kv, model
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.lean = False  # the adaptive policy's current mode
        self.watermark = max(1, kv.usable_pages // 100)  # pages kept free at admission: room to grow
        self.preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> Step:
        step = Step()
        now = time.monotonic()
        for q in (self.waiting, self.running):
            for s in [s for s in q if s.done or s.expired(now)]:
                q.remove(s)
                self.free(s)
                step.dropped.append(s)
        self.lean = self.cfg.adaptive.lean(len(self.running) + len(self.waiting), self.lean)
        self._apply_lean()
        budget = self.cfg.max_num_batched_tokens
        # Sequences the token budget left out last step go first (stable: otherwise admission order,
        # so the oldest keep their pages when preemption comes).
        for seq in sorted(self.running, key=lambda s: not s.skipped):
            if seq not in self.running:  # preempted below to make room for an older one
                continue
            if seq.solo:
                step.solo.append(seq)
                continue
            w = seq.window
            assert w is not None
            seq.skipped = bool(step.batched) and len(w.tokens) > budget
            if seq.skipped:
                continue  # over the step's token budget: it runs next step, keeping its pages
            if not self._reserve(seq, w.end, step.batched):
                continue  # preempted itself (the newest left)
            budget -= len(w.tokens)
            step.batched.append(seq)
        self._admit(step, budget)
        return step

    def _admit(self, step: Step, budget: int) -> None:
        adaptive = self.cfg.adaptive
        while self.waiting and len(self.running) < self.cfg.max_num_seqs:
            seq = self.waiting[0]
            if seq.state is None:
                if not seq.preemptions:
                    seq.lean = self.lean
                seq.start(self.model, adaptive.block_size if adaptive.enabled else 0)
                if isinstance(seq.state, D2FSeq) and self.lean:
                    seq.state.lean = Lean(adaptive.tau_add, adaptive.max_active)
            assert seq.state is not None
            if seq.solo:
                self.waiting.popleft()
                self.running.append(seq)
                step.solo.append(seq)
                continue
            if seq.state.finished or seq.window is None:  # nothing to forward (cannot happen for max_tokens >= 1)
                self.waiting.popleft()
                step.finished.append(seq)
                continue
            w = seq.window
            need = self.kv.pages_for(w.end) - len(seq.pages)
            # Pages kept free for the running ones to grow into (none needed when nothing runs).
            reserve = self.watermark if self.running else 0
            if (step.batched and len(w.tokens) > budget) or need + reserve > self.kv.free_pages:
                break
            self.waiting.popleft()
            self._grow(seq, need)
            self.running.append(seq)
            step.batched.append(seq)
            budget -= len(w.tokens)

    def _reserve(self, seq: Sequence, end: int, scheduled: list[Sequence]) -> bool:
        """Pages for positions [0, end) of a running sequence, preempting the newest ones not yet
        scheduled in this step if needed (the sequence itself when none is left)."""
        need = self.kv.pages_for(end) - len(seq.pages)
        while need > self.kv.free_pages:
            victim = next((s for s in reversed(self.running) if not s.solo and s is not seq and s not in scheduled),
                          seq)
            self.preempt(victim)
            if victim is seq:
                return False
        if need > 0:
            self._grow(seq, need)
        return True

    def _grow(self, seq: Sequence, pages: int) -> None:
        seq.pages += self.kv.allocate(pages, seq.pages)
        seq.stats.kv_tokens = max(seq.stats.kv_tokens, len(seq.pages) * self.kv.page_size)

    def preempt(self, seq: Sequence) -> None:
        """Recompute preemption: drop the sequence's KV and state; it waits at the front of the queue."""
        self.running.remove(seq)
        self.free(seq)
        seq.state, seq.window = None, None
        seq.preemptions += 1
        self.preemptions += 1
        seq.writer.restart()
        self.waiting.appendleft(seq)

    def free(self, seq: Sequence) -> None:
        if seq.pages:
            self.kv.release(seq.pages)
            seq.pages = []
        if seq.solo and seq.state is not None:
            seq.state.close()  # type: ignore[union-attr]

    def finish(self, seq: Sequence) -> None:
        if seq in self.running:
            self.running.remove(seq)
        self.free(seq)

    def _apply_lean(self) -> None:
        a = self.cfg.adaptive
        lean = Lean(a.tau_add, a.max_active) if self.lean else Lean()
        for s in self.running:
            if isinstance(s.state, D2FSeq):
                s.state.lean = lean
