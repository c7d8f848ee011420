"""One batched forward's inputs, built once for the whole batch: the packed token ids, every
token's position and pool slot, the attention chunks (each sequence's keys and mask), and the
packed rows whose logits are wanted. The index arithmetic runs in numpy (a few microseconds per op
where a torch op costs tens) and the results move to the model's device in one go."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from models.attention import AttnChunk, VarlenBatch
from models.engine.methods import Window
from models.kv_cache import SlotKVCache

# The attention chunking's cost models (ns, measured on the 2-core dev CPU, tiny model). They change
# speed only: every sequence sees the same keys whichever way its batch is cut.
# Paged pool: gathering a key's K/V, one query-key pair of SDPA, the fixed cost of one more call and
# gather. Sequences sorted by key range are cut where padding them to one shape costs more than a call.
KEY_NS, PAIR_NS, CHUNK_NS = 60.0, 15.0, 25_000.0
# Contiguous slots (no gather): one SDPA call with its Python around it, a key seen by one block of
# 32 queries (the CPU flash kernel's query block: what a one-token query pays per key), a query-key
# pair. A chunk is a range of slots, so a slot between two chunk members without a window pads it.
SLOT_CALL_NS, SLOT_KEY_NS, SLOT_PAIR_NS, Q_BLOCK = 15_000.0, 29.0, 9.5, 32
_UNUSED = torch.empty(0, dtype=torch.long)  # seq_of / offset of a uniform chunk (never read)
ToDevice = Callable[[np.ndarray], torch.Tensor]


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
    """Paged pool: contiguous groups [b0, b1) of a batch (ordered by key range `ends`) to attend together."""
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


def slot_chunk_bounds(slots: list[int], lengths: list[int], ends: list[int]) -> list[tuple[int, int]]:
    """Contiguous slots: groups [b0, b1) of a batch ordered by slot, each attended as one view of
    its slot range. A step of one-token decodes becomes one call; D2F windows of 30-130 tokens
    mostly one call each (padding them to a common shape would cost more than the calls)."""
    def cost(rows: int, tq: int, lk: int) -> float:
        return SLOT_CALL_NS + rows * lk * (-(-tq // Q_BLOCK) * SLOT_KEY_NS + tq * SLOT_PAIR_NS)

    bounds, b0, tq, lk = [], 0, lengths[0], ends[0]
    for i in range(1, len(slots)):
        mtq, mlk = max(tq, lengths[i]), max(lk, ends[i])
        merged = cost(slots[i] - slots[b0] + 1, mtq, mlk)
        split = cost(slots[i - 1] - slots[b0] + 1, tq, lk) + cost(1, lengths[i], ends[i])
        if merged <= split:
            tq, lk = mtq, mlk
        else:
            bounds.append((b0, i))
            b0, tq, lk = i, lengths[i], ends[i]
    bounds.append((b0, len(slots)))
    return bounds


def _allowed(starts: np.ndarray, ends: np.ndarray, prefix: np.ndarray, block: np.ndarray, tq: int,
             lk: int) -> np.ndarray:
    """[b, tq, lk]: may each sequence's window query (padded to tq) see each key below lk."""
    k = np.arange(lk)
    kid = _span_ids(k[None, :], prefix, block)
    qid = _span_ids(starts[:, None] + np.arange(tq)[None, :], prefix, block)
    # Padding queries sit past the sequence's end: they see all of its keys (never an empty row, no NaN).
    return (k[None, :] < ends[:, None])[:, None, :] & (kid[:, None, :] <= qid[:, :, None])


def _additive(allowed: np.ndarray) -> np.ndarray:
    # SDPA converts a boolean mask to exactly this (0 / -inf) at every layer; once here instead.
    return np.where(allowed, np.float32(0.0), np.float32(-np.inf))


def build_batch(windows: list[Window], tables: list[list[int]], page_size: int, max_positions: int,
                device: torch.device, dtype: torch.dtype = torch.float32, padded: bool = False,
                chunked: bool = True, slots: SlotKVCache | None = None) -> BatchInput:
    """`padded`: every window is padded to the longest (pad tokens run through the linear layers,
    write the null slot and are never attended to), the layout a [B, T] forward would use; the
    default packs the windows back to back so linear layers only see real tokens. `chunked`:
    attention in groups of similar sequences, else one call. `slots`: the pool is contiguous slots
    and `windows` are in slot order; else `tables` index a paged pool, best with `windows` sorted
    by end."""
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
    positions = starts[seq_of] + offset
    rows = np.array([f + r for f, w in zip(first.tolist(), windows, strict=True) for r in w.logit_rows],
                    dtype=np.int64)

    def dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device)

    lengths = run.tolist()
    write_rows = None
    if slots is not None:
        slot = np.array([slots.slot_of(t) for t in tables], dtype=np.int64)
        real = (offset < valid[seq_of]).nonzero()[0] if padded else np.arange(len(ids))
        write = slots.slot_rows(slot[seq_of[real]], positions[real])
        write_rows = dev(real) if padded else None  # padding tokens are not written
        order = slot.tolist()
        bounds = slot_chunk_bounds(order, lengths, ends.tolist()) if chunked and not padded else [(0, b)]
        chunks = [_slot_chunk(b0, b1, order, lengths, starts, ends, prefix, block, first, run, seq_of, offset,
                              dev, dtype) for b0, b1 in bounds]
    else:
        write, chunks = _paged_chunks(tables, page_size, lengths, starts, valid, ends, prefix, block, first,
                                      run, seq_of, offset, positions, dev, dtype, chunked and not padded)
    batch = VarlenBatch(dev(np.minimum(positions, max_positions - 1)), dev(write), chunks, write_rows)
    return BatchInput(dev(np.asarray(ids, dtype=np.int64)), batch, dev(rows), [len(w.logit_rows) for w in windows])


def _slot_chunk(b0: int, b1: int, slots: list[int], lengths: list[int], starts: np.ndarray, ends: np.ndarray,
                prefix: np.ndarray, block: np.ndarray, first: np.ndarray, run: np.ndarray, seq_of: np.ndarray,
                offset: np.ndarray, dev: ToDevice, dtype: torch.dtype) -> AttnChunk:
    s0, rows = slots[b0], slots[b1 - 1] - slots[b0] + 1
    ctq, clk = max(lengths[b0:b1]), int(ends[b0:b1].max())
    n0, n1 = int(first[b0]), int(first[b1 - 1] + run[b1 - 1])
    allowed = _allowed(starts[b0:b1], ends[b0:b1], prefix[b0:b1], block[b0:b1], ctq, clk)
    uniform = rows == b1 - b0 and all(x == ctq for x in lengths[b0:b1])
    if rows == b1 - b0:
        mask = _additive(allowed)[:, None]
    else:  # slots in the range without a window: padding rows that see key 0 only (finite, discarded)
        mask = np.full((rows, 1, ctq, clk), -np.inf, dtype=np.float32)
        mask[..., 0] = 0.0
        mask[np.asarray(slots[b0:b1]) - s0, 0] = _additive(allowed)
    if uniform:
        seq_rows, offs = _UNUSED, _UNUSED
    else:
        row_of = np.asarray(slots[b0:b1], dtype=np.int64) - s0
        seq_rows, offs = dev(row_of[seq_of[n0:n1] - b0]), dev(offset[n0:n1])
    return AttnChunk(n0, n1, None, dev(mask).to(dtype), seq_rows, offs, ctq, uniform,
                     s0, rows, clk)


def _paged_chunks(tables: list[list[int]], page_size: int, lengths: list[int], starts: np.ndarray,
                  valid: np.ndarray, ends: np.ndarray, prefix: np.ndarray, block: np.ndarray, first: np.ndarray,
                  run: np.ndarray, seq_of: np.ndarray, offset: np.ndarray, positions: np.ndarray, dev: ToDevice,
                  dtype: torch.dtype, chunked: bool) -> tuple[np.ndarray, list[AttnChunk]]:
    """The write slots and the chunks of a paged pool: each sequence's keys gathered through its page table."""
    b = len(tables)
    lk = int(ends.max())
    width = max(len(t) for t in tables)
    table = np.zeros((b, width), dtype=np.int64)
    for i, t in enumerate(tables):
        table[i, : len(t)] = t
    k = np.arange(lk)
    live = k[None, :] < ends[:, None]  # [B, Lk]: the sequence's keys; the rest read the null slot
    page = np.minimum(k // page_size, width - 1)
    read = np.where(live, table[:, page] * page_size + k % page_size, 0)
    write = np.where(offset < valid[seq_of], read[seq_of, np.minimum(positions, lk - 1)], 0)
    mask = _additive(_allowed(starts, ends, prefix, block, max(lengths), lk))[:, None]
    chunks = []
    for b0, b1 in chunk_bounds(lengths, ends.tolist()) if chunked else [(0, b)]:
        ctq, clk = max(lengths[b0:b1]), int(ends[b0:b1].max())
        n0, n1 = int(first[b0]), int(first[b1 - 1] + run[b1 - 1])
        chunks.append(AttnChunk(n0, n1, dev(read[b0:b1, :clk]), dev(mask[b0:b1, :, :ctq, :clk]).to(dtype),
                                dev(seq_of[n0:n1] - b0), dev(offset[n0:n1]), ctq,
                                all(x == ctq for x in lengths[b0:b1])))
    return write, chunks
