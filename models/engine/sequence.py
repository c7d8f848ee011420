"""One request inside the batched engine: its plan, decoding state, KV pages, output and stats."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import torch

from models.engine.methods import SeqDecoder, SoloSeq, Window, make_state
from models.engine.output import OutputWriter
from models.engine.request import Plan, RequestStats, TextDelta
from models.transformer import Transformer

Sink = Callable[[TextDelta | BaseException], None]  # where a request's deltas (or its error) go


@dataclass(slots=True, eq=False)
class Sequence:
    plan: Plan
    stats: RequestStats
    writer: OutputWriter
    sink: Sink
    deadline: float | None = None  # time.monotonic() past which the request is given up
    state: SeqDecoder | SoloSeq | None = None  # None while waiting (and after a preemption)
    window: Window | None = None  # the next forward's window, computed once per step
    generator: torch.Generator | None = None
    pages: list[int] = field(default_factory=list)
    lean: bool = False  # admitted while the adaptive policy was lean (keeps that config through preemption)
    preemptions: int = 0
    skipped: bool = False  # left out of the last step by the token budget
    first_token: float = 0.0  # time.time() of the first delta with text (time to first chunk)

    @property
    def solo(self) -> bool:
        return isinstance(self.state, SoloSeq)

    @property
    def done(self) -> bool:
        return self.stats.state != "running"

    def start(self, model: Transformer, lean_block: int) -> None:
        """(Re)start decoding from the prompt: a fresh state and the request's generator, reseeded,
        so an attempt after a preemption draws exactly what the first one drew."""
        plan = self.plan
        decoder = plan.decoder
        if self.lean and lean_block and hasattr(decoder, "cfg") and decoder.name == "d2f":
            decoder = type(decoder)(model, replace(decoder.cfg, block_size=lean_block))  # type: ignore[call-arg]
        self.state = make_state(model, decoder, plan.prompt_ids, plan.params)
        self.generator = plan.params.generator(model.embed.weight.device)
        self.window = None if isinstance(self.state, SoloSeq) else self.state.window()

    def expired(self, now: float) -> bool:
        return self.deadline is not None and now > self.deadline

    def mark_first(self) -> None:
        if not self.first_token:
            self.first_token = time.time()
