"""A sequence the engine does not batch: its single-sequence decoder runs one event per engine step.

Vanilla diffusion decoding recomputes the whole sequence without a cache at every forward (the
LLaDA reference setting); it stays batch-1, stepped between the batched forwards, so it shares the
engine's queueing, streaming, cancellation and stats without a batched implementation of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

from models.decoders import DecodeEvent, Decoder, FinishReason
from models.sampling import SamplingParams


class SoloSeq:
    def __init__(self, decoder: Decoder, prompt: list[int], params: SamplingParams) -> None:
        self._events: Iterator[DecodeEvent] = decoder.decode(prompt, params)
        self.finished = False
        self.finish_reason: FinishReason | None = None

    def step(self) -> DecodeEvent:
        """The decoder's next event (one or more of its forwards)."""
        ev = next(self._events, None)
        if ev is None:
            raise RuntimeError("the decoder ended without a finished event")
        self.finished, self.finish_reason = ev.finished, ev.finish_reason
        return ev

    def close(self) -> None:
        self._events.close()  # type: ignore[attr-defined]
