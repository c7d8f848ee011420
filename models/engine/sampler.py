"""Sampling for a whole batch: greedy sequences in one call, each sampled sequence with its own
generator (so its draws are those it would make alone), and every threshold test in one op."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from models.sampling import SamplingParams, sample

GREEDY = SamplingParams()


@dataclass(slots=True)
class Draw:
    """One sequence's sampling rows."""

    logits: torch.Tensor  # [M, V]
    params: SamplingParams
    generator: torch.Generator | None
    threshold: float  # confidence above which a token counts as "over"


def sample_batch(draws: list[Draw]) -> list[tuple[list[int], list[bool], list[float]]]:
    """Per draw: its tokens, whether each is over its threshold, and their confidences."""
    if not draws:
        return []
    greedy = [i for i, d in enumerate(draws) if d.params.temperature == 0.0]
    parts: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(draws)
    if greedy:  # rows are independent: one softmax over all of them gives each row what it gets alone
        logits = draws[greedy[0]].logits if len(greedy) == 1 else torch.cat([draws[i].logits for i in greedy])
        tok, conf = sample(logits, GREEDY, None)
        at = 0
        for i in greedy:
            m = draws[i].logits.shape[0]
            parts[i] = (tok[at : at + m], conf[at : at + m])
            at += m
    for i, d in enumerate(draws):
        if parts[i] is None:
            if d.logits.shape[0]:
                parts[i] = sample(d.logits, d.params, d.generator)
            else:  # a window that only writes the cache samples nothing (and draws nothing)
                parts[i] = (torch.empty(0, dtype=torch.long, device=d.logits.device),
                            torch.empty(0, device=d.logits.device))
    done = [p for p in parts if p is not None]
    tokens = done[0][0] if len(done) == 1 else torch.cat([p[0] for p in done])
    conf = done[0][1] if len(done) == 1 else torch.cat([p[1] for p in done])
    counts = [d.logits.shape[0] for d in draws]
    thresholds = {d.threshold for d in draws}
    if min(thresholds) >= 1.0:  # no confidence is above 1 (AR's threshold): nothing to compare
        over = [False] * len(conf)
    elif len(thresholds) == 1:  # conf > float compares in float32, as the single-sequence decoders do
        over = (conf > thresholds.pop()).tolist()
    else:
        thr = torch.repeat_interleave(torch.tensor([d.threshold for d in draws], dtype=conf.dtype,
                                                   device=conf.device), torch.tensor(counts, device=conf.device))
        over = (conf > thr).tolist()
    tok_l, conf_l = tokens.tolist(), conf.tolist()
    out, at = [], 0
    for m in counts:
        out.append((tok_l[at : at + m], over[at : at + m], conf_l[at : at + m]))
        at += m
    return out
