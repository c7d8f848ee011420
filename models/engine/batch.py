"""One batched forward's inputs, built once for the whole batch: the packed token ids, every
token's position and pool slot, the attention chunks (each sequence's key slots and mask), and the
packed rows whose logits are wanted. The index arithmetic runs in numpy (a few microseconds per op
where a torch op costs tens) and the results move to the model's device in one go."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from models.attention import AttnChunk, VarlenBatch
from models.engine.methods import Window

# The attention chunking's cost model (ns, measured on the 2-core dev CPU, tiny model): gathering a
# key's K/V from the pool, one query-key pair of SDPA, and the fixed cost of one more SDPA call and
# gather. Sequences of a batch sorted by their key range are cut where padding them to one shape
# would cost more than another call. It changes speed only: every sequence sees the same keys.
KEY_NS, PAIR_NS, CHUNK_NS = 60.0, 15.0, 25_000.0


@dataclass(slots=True)
class BatchInput:
    input_ids: torch.Tensor  # [N]
    batch: VarlenBatch
    rows: torch.Tensor  # [R] packed rows whose logits the forward returns
    row_counts: list[int]  # how many of them belong to each sequence, in batch order


def _span_ids(pos: np.ndarray, prefix: np.ndarray, block: np.ndarray) -> np.ndarray:
    """models.attention.span_ids in numpy."""
    return np.where(pos < prefix, 0, (pos - prefix) // block + 1)


def chunk_bounds(lengths: list[int], ends: list[int]) -> list[tuple[int, int]]:
    """Contiguous groups [b0, b1) of a batch (ordered by key range `ends`) to attend together."""
    def cost(n: int, tq: int, lk: int) -> float:
        return n * lk * (KEY_NS + tq * PAIR_NS) + CHUNK_NS

    bounds, b0, tq = [], 0, lengths[0]
    for i in range(1, len(lengths)):
        merged = cost(i - b0 + 1, max(tq, lengths[i]), ends[i])
        split = cost(i - b0, tq, ends[i - 1]) + cost(1, lengths[i], ends[i])
        if merged <= split:
            tq = max(tq, lengths[i])
        else:
            bounds.append((b0, i))
            b0, tq = i, lengths[i]
    bounds.append((b0, len(lengths)))
    return bounds


def build_batch(windows: list[Window], tables: list[list[int]], page_size: int, max_positions: int,
                device: torch.device, dtype: torch.dtype = torch.float32, padded: bool = False,
                chunked: bool = True) -> BatchInput:
    """`padded`: every window is padded to the longest (pad tokens run through the linear layers,
    write the null slot and are never attended to), the layout a [B, T] forward would use; the
    default packs the windows back to back so linear layers only see real tokens. `chunked`:
    attention in groups of similar sequences (best when `windows` are sorted by end), else one call."""
    b = len(windows)
    meta = np.array([(w.start, len(w.tokens), w.prefix, w.block) for w in windows], dtype=np.int64)
    starts, valid, prefix, block = meta[:, 0], meta[:, 1], meta[:, 2:3], meta[:, 3:4]
    tq = int(valid.max())
    run = np.full(b, tq) if padded else valid
    ids: list[int] = []
    for w in windows:
        ids += w.tokens
        if padded:
            ids += [0] * (tq - len(w.tokens))
    seq_of = np.repeat(np.arange(b), run)
    first = np.cumsum(run) - run  # each window's first packed token
    offset = np.arange(len(ids)) - first[seq_of]
    ends = starts + valid
    lk = int(ends.max())
    width = max(len(t) for t in tables)
    table = np.zeros((b, width), dtype=np.int64)
    for i, t in enumerate(tables):
        table[i, : len(t)] = t
    k = np.arange(lk)
    live = k[None, :] < ends[:, None]  # [B, Lk]: the sequence's keys; the rest read the null slot
    page = np.minimum(k // page_size, width - 1)
    read = np.where(live, table[:, page] * page_size + k % page_size, 0)
    positions = starts[seq_of] + offset
    write = np.where(offset < valid[seq_of], read[seq_of, np.minimum(positions, lk - 1)], 0)
    kid = _span_ids(k[None, :], prefix, block)
    qid = _span_ids(starts[:, None] + np.arange(tq)[None, :], prefix, block)
    # Padding queries sit past the sequence's end: they see all of its keys (never an empty row, no NaN).
    allowed = live[:, None, :] & (kid[:, None, :] <= qid[:, :, None])
    # An additive mask: SDPA converts a boolean one to exactly this, at every layer; once here instead.
    mask = np.where(allowed, np.float32(0.0), np.float32(-np.inf))[:, None]
    rows = np.array([f + r for f, w in zip(first.tolist(), windows, strict=True) for r in w.logit_rows],
                    dtype=np.int64)

    def dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    lengths = run.tolist()
    chunks = []
    for b0, b1 in chunk_bounds(lengths, ends.tolist()) if chunked and not padded else [(0, b)]:
        ctq, clk = max(lengths[b0:b1]), int(ends[b0:b1].max())
        n0, n1 = int(first[b0]), int(first[b1 - 1] + run[b1 - 1])
        chunks.append(AttnChunk(n0, n1, dev(read[b0:b1, :clk]), dev(mask[b0:b1, :, :ctq, :clk]).to(dtype),
                                dev(seq_of[n0:n1] - b0), dev(offset[n0:n1]), ctq,
                                all(x == ctq for x in lengths[b0:b1])))
    batch = VarlenBatch(dev(np.minimum(positions, max_positions - 1)), dev(write), chunks)
    return BatchInput(dev(np.asarray(ids, dtype=np.int64)), batch, dev(rows), [len(w.logit_rows) for w in windows])
