"""The decode loop of one request: decoder events in, text deltas out.

Whichever thread runs a step of the loop marks itself as running that request (a thread-local),
so the model's forward hooks can count the request's forward passes and stop a cancelled one
before its next forward, even mid-way through a decoder step.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import torch

from models.decoders import DecodeEvent
from models.engine.request import DecodeCancelled, Plan, RequestStats, TextDelta
from models.tokenizer import StreamDetokenizer, TextTokenizer

_current = threading.local()  # .stats: the RequestStats of the step this thread is running


def install_hooks(model: torch.nn.Module) -> None:
    model.register_forward_pre_hook(_before_forward)
    model.register_forward_hook(_after_forward)


def _before_forward(_module: torch.nn.Module, _args: Any) -> None:
    stats: RequestStats | None = getattr(_current, "stats", None)
    if stats is not None and stats.cancelled:
        raise DecodeCancelled(stats.request_id)


def _after_forward(_module: torch.nn.Module, _args: Any, _out: Any) -> None:
    stats: RequestStats | None = getattr(_current, "stats", None)
    if stats is not None:
        stats.forwards += 1


def _step(it: Iterator[DecodeEvent], stats: RequestStats) -> DecodeEvent | None:
    _current.stats, stats.decoding = stats, True
    try:
        return next(it, None)
    finally:  # before the loop yields: the thread may run another request's step next
        _current.stats, stats.decoding = None, False


def run(plan: Plan, stats: RequestStats, tokenizer: TextTokenizer) -> Iterator[TextDelta]:
    """Deltas of final text; the last one has finished=True. Raises DecodeCancelled once cancelled."""
    it = plan.decoder.decode(plan.prompt_ids, plan.params)
    detok = StreamDetokenizer(tokenizer)
    skip, seen = plan.request.skip_tokens, 0  # seen: tokens decoded so far, skipped ones included
    try:
        while True:
            ev = _step(it, stats)
            if ev is None:
                raise RuntimeError(f"the {plan.decoder.name} decoder ended without a finished event")
            fresh = ev.token_ids
            if seen < skip:
                # The skipped tokens go through the detokenizer too: it then holds exactly the text the
                # earlier attempt sent, and the resumed text continues it (even mid-character).
                k = min(skip - seen, len(fresh))
                detok.push(fresh[:k])
                fresh = fresh[k:]
            seen += len(ev.token_ids)
            if not fresh and not ev.finished:
                continue
            text = detok.push(fresh) if fresh else ""
            if ev.finished:
                text += detok.flush()  # a tail cut mid-character: sent as a full decode renders it
                if stats.state == "running":  # not when the consumer left while this step ran
                    stats.state = "finished"
            stats.tokens += len(fresh)
            yield TextDelta(text, fresh, ev.forwards, ev.finished,
                            (ev.finish_reason or "length") if ev.finished else None)
            if ev.finished:
                return
    except BaseException as e:
        if stats.state == "running":  # GeneratorExit: the caller stopped reading
            stats.state = "cancelled" if isinstance(e, DecodeCancelled | GeneratorExit) else "failed"
        raise
    finally:
        stats.ended = time.time()
        stats.cancelled = stats.state != "finished"
        it.close()
