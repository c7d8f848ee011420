"""Attention masks as block ids, and the attention op.

Every mask Tessera needs is "query q may see key k iff block(k) <= block(q)" for some block
numbering of absolute positions:
- D2F block-causal: the prompt is block 0 (bidirectional within itself), then blocks of
  `block_size` counted from the end of the prompt, bidirectional within, causal across;
- causal (AR): every position is its own block;
- full bidirectional (LLaDA/Dream teachers, vanilla and Fast-dLLM decoding): no mask at all.
The same rule is used for training and for every inference forward, prefill and decode alike.
All three are `span_ids(pos, prefix, block)`: positions before `prefix` are block 0, then blocks of
`block` (D2F: the prompt and block_size; causal: 0 and 1; bidirectional: prefix past the end), which
is how a batched forward gives every sequence its own mask from two integers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from models.kv_cache import PagedKVCache, SlotKVCache


def block_ids(prompt_len: int, total_len: int, block_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Block number of each absolute position under the D2F mask (prompt = block 0)."""
    if prompt_len < 0 or total_len < prompt_len or block_size <= 0:
        raise ValueError(f"bad mask geometry: prompt_len={prompt_len} total_len={total_len} block={block_size}")
    pos = torch.arange(total_len, device=device)
    gen = torch.div(pos - prompt_len, block_size, rounding_mode="floor") + 1
    return torch.where(pos < prompt_len, torch.zeros_like(pos), gen)


def causal_ids(total_len: int, device: torch.device | str = "cpu") -> torch.Tensor:
    return torch.arange(total_len, device=device)


def mask_from_ids(q_ids: torch.Tensor, k_ids: torch.Tensor) -> torch.Tensor:
    """Boolean [.., 1, Tq, Tk] mask (True = may attend) from block ids of queries and keys.

    Accepts [T] ids (one sequence) or [B, T] ids (a batch with per-sample prompt lengths).
    """
    m = k_ids.unsqueeze(-2) <= q_ids.unsqueeze(-1)
    return m.unsqueeze(-3)


def window_mask(ids: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """Mask for a forward over positions [start, end) attending to keys [0, end)."""
    return mask_from_ids(ids[..., start:end], ids[..., :end])


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """q: [B, H, Tq, D]; k, v: [B, Hkv, Tk, D]; mask: bool broadcastable to [B, H, Tq, Tk]."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.shape[1] != q.shape[1])


def span_ids(pos: torch.Tensor, prefix: torch.Tensor, block: torch.Tensor) -> torch.Tensor:
    """Block ids of positions `pos` [B, T] for per-sequence `prefix` and `block` [B, 1] (see the module doc)."""
    return torch.where(pos < prefix, torch.zeros_like(pos), torch.div(pos - prefix, block, rounding_mode="floor") + 1)


@dataclass(slots=True)
class AttnChunk:
    """Sequences [b0, b1) of a batch (their packed tokens [n0, n1)) attended in one SDPA call,
    padded to their own longest window and key range only.

    Paged pool: `read_slots` gathers each row's keys. Contiguous slots (`read_slots` None): the
    chunk is the pool's slots [slot0, slot0 + rows) and its keys are a view of them; a slot in
    that range without a window in this batch is a padding row (its mask lets it see key 0 only)."""

    n0: int
    n1: int
    read_slots: torch.Tensor | None  # [rows, Lk] pool slots of each row's keys (past its end: the null slot)
    mask: torch.Tensor  # [rows, 1, Tq, Lk] additive: 0 = may attend, -inf = may not
    seq_of: torch.Tensor  # [n] each token's row in the chunk
    offset: torch.Tensor  # [n] its index inside its window (its row of the padded queries)
    max_window: int  # Tq
    uniform: bool  # every row has a window of Tq tokens: the packed queries already are [rows, Tq]
    slot0: int = 0  # contiguous slots: the chunk's first slot
    rows: int = 0  # its rows (padded queries); 0: read_slots' first dimension
    keys: int = 0  # Lk; 0: read_slots' second dimension


@dataclass(slots=True)
class VarlenBatch:
    """One batched forward over the windows of B sequences, packed on one token axis of N tokens.

    Linear layers run on the packed tokens (no padding); attention pads the queries per chunk of
    similar sequences and reads each sequence's keys 0..Lk-1 from the pool (a gather from a paged
    pool, a view of contiguous slots), under a per-sequence mask that also hides keys past the
    sequence's end (models.engine.batch.build_batch).
    """

    positions: torch.Tensor  # [N] absolute position of each packed token
    write_slots: torch.Tensor  # [N] pool slot each token's K/V is written to (padding: the null slot)
    chunks: list[AttnChunk]
    write_rows: torch.Tensor | None = None  # the packed tokens to write (None: all; padded layout: the real ones)


def attend_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, batch: VarlenBatch, kv: PagedKVCache,
                  layer: int) -> torch.Tensor:
    """q [N, H, D], k and v [N, Hkv, D] of packed tokens -> attention output [N, H * D].

    The window's K/V goes into the pool first, so each sequence's keys are read in position order:
    the cached prefix and the window, exactly the keys a single-sequence forward sees.
    """
    if batch.write_rows is not None:
        k, v = k[batch.write_rows], v[batch.write_rows]
    kv.write(layer, batch.write_slots, k, v)
    h, d = q.shape[1:]
    pool = kv.slot_view(layer) if isinstance(kv, SlotKVCache) else None
    outs = []
    for c in batch.chunks:
        if c.read_slots is None:
            assert pool is not None
            b, lk = c.rows, c.keys
            keys, values = pool[0][c.slot0 : c.slot0 + b, :, :lk], pool[1][c.slot0 : c.slot0 + b, :, :lk]
        else:
            keys, values = (x.transpose(1, 2) for x in kv.read(layer, c.read_slots))  # [b, Hkv, Lk, D]
            b = c.read_slots.shape[0]
        tq = c.max_window
        qc = q[c.n0 : c.n1]
        if c.uniform:  # e.g. a step of AR decodes, one token each, or one sequence: no scatter, no gather
            qp = qc.view(b, tq, h, d)
        else:
            qp = q.new_zeros(b, tq, h, d)
            qp[c.seq_of, c.offset] = qc
        out = attend(qp.transpose(1, 2), keys, values, c.mask).transpose(1, 2)
        if not c.uniform:
            outs.append(out[c.seq_of, c.offset])
        elif b == 1 or tq == 1:  # [b, tq, H, D] -> [b * tq, H, D] is a view: the one cat below copies
            outs.append(out[0] if b == 1 else out[:, 0])
        else:
            outs.append(out.reshape(b * tq, h, d))
    return (outs[0] if len(outs) == 1 else torch.cat(outs)).reshape(-1, h * d)
