"""A request's output stream: decoded tokens in, text deltas out.

Tokens a resumed request already delivered (skip_tokens) are decoded but not sent, and go through
the detokenizer so the resumed text continues the first attempt's exactly (even mid-character).
Tokens a preempted sequence decodes again after its recompute were sent before: they are dropped.
"""

from __future__ import annotations

from models.decoders import FinishReason
from models.engine.request import RequestStats, TextDelta
from models.tokenizer import StreamDetokenizer, TextCodec


class OutputWriter:
    def __init__(self, tokenizer: TextCodec, skip: int, stats: RequestStats) -> None:
        self.detok = StreamDetokenizer(tokenizer)
        self.skip, self.stats = skip, stats
        self.seen = 0  # tokens decoded so far (skipped ones included), over every attempt
        self.replay = 0  # tokens the current attempt decodes again before it reaches new ones

    def restart(self) -> None:
        """The sequence was preempted: its next attempt decodes from the prompt again."""
        self.replay = self.seen

    def push(self, tokens: list[int], finished: bool, reason: FinishReason | None) -> TextDelta | None:
        """The delta for a step's newly final tokens; None when there is nothing to send."""
        if self.replay:
            k = min(self.replay, len(tokens))
            tokens, self.replay = tokens[k:], self.replay - k
        fresh = tokens
        if self.seen < self.skip:
            k = min(self.skip - self.seen, len(fresh))
            self.detok.push(fresh[:k])
            fresh = fresh[k:]
        self.seen += len(tokens)
        if not fresh and not finished:
            return None
        text = self.detok.push(fresh) if fresh else ""
        if finished:
            text += self.detok.flush()  # a tail cut mid-character: sent as a full decode renders it
        self.stats.tokens += len(fresh)
        return TextDelta(text, fresh, self.stats.forwards, finished, (reason or "length") if finished else None)
