"""KV cache for finished blocks.

Each forward writes the K/V of its whole window right after the committed prefix, attends over
prefix + window, and then keeps only the first `commit` window positions. Every decoder's window
starts exactly at the end of the committed prefix (D2F retires blocks in order; Fast-dLLM's
window starts at the current block; AR's at the next token), so uncommitted entries are simply
overwritten by the next forward: no concatenation, no copies.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch


class KVCache:
    def __init__(self, num_layers: int, batch: int, num_kv_heads: int, head_dim: int, capacity: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        shape = (batch, num_kv_heads, capacity, head_dim)
        self.k = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.capacity = capacity
        self.length = 0  # committed positions [0, length) hold valid K/V

    def window(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write the window's K/V after the prefix; return K/V over prefix + window."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            raise ValueError(f"KV cache overflow: need {end} positions, capacity {self.capacity}")
        self.k[layer][:, :, self.length:end] = k
        self.v[layer][:, :, self.length:end] = v
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def commit(self, n: int) -> None:
        self.length += n

    def truncate(self, length: int) -> None:
        """Forget everything after `length` (Fast-dLLM refreshes its approximate prefix per block)."""
        if not 0 <= length <= self.length:
            raise ValueError(f"cannot truncate a cache of length {self.length} to {length}")
        self.length = length


class PagedKVCache:
    """The batched engine's K/V pool: fixed-size pages shared by every sequence of a replica.

    A sequence owns a list of pages (its page table); its position t lives in slot
    `table[t // page_size] * page_size + t % page_size` of each layer's flat [slots, Hkv, D] tensor,
    so memory follows what sequences hold, not max_model_len x max_num_seqs. Page 0 is never handed
    out: padded keys read it and padded tokens write it, so no index needs a branch. Like KVCache,
    a forward writes its whole window and the sequence keeps only the committed part (its later
    slots are overwritten by the next window), but here the window K/V goes through the pool.
    """

    contiguous = False  # attention gathers each sequence's keys (`read`); SlotKVCache reads views

    def __init__(self, num_layers: int, num_pages: int, page_size: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str) -> None:
        if num_pages < 2 or page_size < 1:
            raise ValueError(f"a paged KV cache needs >= 2 pages (one is the null page) and page_size >= 1, "
                             f"got {num_pages} pages of {page_size}")
        self.num_pages, self.page_size = num_pages, page_size
        self.num_kv_heads, self.head_dim = num_kv_heads, head_dim
        shape = self._storage_shape()
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self._free = list(range(num_pages - 1, 0, -1))  # pop() hands out low pages first
        # Reused by every `read`: a layer's gathered K/V is consumed by its attention before the next
        # read, and gathering into warm memory costs half of gathering into a fresh allocation (CPU).
        self._gathered: tuple[torch.Tensor, torch.Tensor] | None = None

    def _storage_shape(self) -> tuple[int, ...]:
        return (self.num_pages * self.page_size, self.num_kv_heads, self.head_dim)

    @property
    def bytes_per_token(self) -> int:
        return 2 * len(self.k) * self.num_kv_heads * self.head_dim * self.k[0].element_size()

    @property
    def free_pages(self) -> int:
        return len(self._free)

    @property
    def usable_pages(self) -> int:
        return self.num_pages - 1

    @property
    def max_seq_pages(self) -> int:
        """The most pages one sequence can hold."""
        return self.usable_pages

    def pages_for(self, tokens: int) -> int:
        return -(-tokens // self.page_size)

    def allocate(self, n: int, table: list[int] | None = None) -> list[int]:
        """n more pages for the sequence whose page table is `table`."""
        if n > len(self._free):
            raise ValueError(f"KV pool exhausted: need {n} pages, {len(self._free)} free")
        return [self._free.pop() for _ in range(n)]

    def release(self, pages: list[int]) -> None:
        self._free.extend(reversed(pages))

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V [N, Hkv, D] of N tokens at their slots [N]."""
        self.k[layer].index_copy_(0, slots, k)
        self.v[layer].index_copy_(0, slots, v)

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V [B, L, Hkv, D] of the slots [B, L] (each sequence's positions 0..L-1, padded).

        The result lives in a buffer the next `read` overwrites: use it before reading again."""
        k, v = self.k[layer], self.v[layer]
        n = slots.numel()
        if self._gathered is None or self._gathered[0].shape[0] < n:
            size = (max(n, 2 * self._gathered[0].shape[0] if self._gathered is not None else 0), *k.shape[1:])
            self._gathered = (k.new_empty(size), v.new_empty(size))
        flat = slots.reshape(-1)
        shape = (*slots.shape, *k.shape[1:])
        out_k = torch.index_select(k, 0, flat, out=self._gathered[0][:n])
        out_v = torch.index_select(v, 0, flat, out=self._gathered[1][:n])
        return out_k.view(shape), out_v.view(shape)


class SlotKVCache(PagedKVCache):
    """Contiguous slots, the CPU layout: the same page accounting (a budget of pages, allocated as a
    sequence grows, released when it leaves), but each running sequence holds one slot of
    `slot_pages` pages and its K/V lives head-major in it: layer storage [slots, Hkv, slot_tokens, D].
    Attention then reads every sequence's keys as a view (`slot_view`), each head's keys one
    contiguous run, instead of gathering them through a page table: without a paged-attention
    kernel the gather was ~1/6 of a 16-sequence decode step here, and SDPA over a position-major
    view (each head's keys 512 bytes apart) ran 2-4x slower than over gathered keys once the pool
    was out of cache.

    Page numbers stay what the scheduler counts; slot s owns pages 1 + s * slot_pages onwards and a
    sequence's pages are its slot's first ones, in order. Writes take `slot_rows` indices (no null
    page: a padded token is simply not written).
    """

    contiguous = True

    def __init__(self, num_layers: int, num_slots: int, slot_pages: int, page_size: int, num_kv_heads: int,
                 head_dim: int, dtype: torch.dtype, device: torch.device | str) -> None:
        if num_slots < 1 or slot_pages < 1:
            raise ValueError(f"need >= 1 slot of >= 1 page, got {num_slots} of {slot_pages}")
        self.num_slots, self.slot_pages = num_slots, slot_pages
        super().__init__(num_layers, 1 + num_slots * slot_pages, page_size, num_kv_heads, head_dim, dtype, device)
        self._free_count = num_slots * slot_pages
        self._free_slots = list(range(num_slots))  # a heap: the lowest free slot is handed out first

    def _storage_shape(self) -> tuple[int, ...]:
        return (self.num_slots, self.num_kv_heads, self.slot_tokens, self.head_dim)

    @property
    def slot_tokens(self) -> int:
        return self.slot_pages * self.page_size

    @property
    def free_pages(self) -> int:
        return self._free_count

    @property
    def max_seq_pages(self) -> int:
        return self.slot_pages

    def slot_of(self, table: list[int]) -> int:
        return (table[0] - 1) // self.slot_pages

    def allocate(self, n: int, table: list[int] | None = None) -> list[int]:
        """The next n pages of the sequence's slot; an empty table takes the lowest free slot, so the
        running sequences stay packed at the front of the pool (their chunks cover few idle slots)."""
        if n > self._free_count:
            raise ValueError(f"KV pool exhausted: need {n} pages, {self._free_count} free")
        if table:
            slot, first = self.slot_of(table), table[-1] + 1
        elif self._free_slots:
            slot = heapq.heappop(self._free_slots)
            first = 1 + slot * self.slot_pages
        else:
            raise ValueError("KV pool exhausted: every slot is held")
        if first + n > 1 + (slot + 1) * self.slot_pages:
            raise ValueError(f"a sequence needs more than its slot's {self.slot_pages} pages")
        self._free_count -= n
        return list(range(first, first + n))

    def release(self, pages: list[int]) -> None:
        """Every page of a sequence (it leaves, or is preempted, whole)."""
        if pages:
            self._free_count += len(pages)
            heapq.heappush(self._free_slots, self.slot_of(pages))

    def slot_rows(self, slots: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """[N * Hkv] storage rows (of the [slots * Hkv * slot_tokens, D] flat view) of N tokens' heads."""
        h, t = self.num_kv_heads, self.slot_tokens
        return ((slots * h)[:, None] * t + np.arange(h)[None, :] * t + positions[:, None]).reshape(-1)

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store K/V [N, Hkv, D] of N tokens at their `slot_rows` [N * Hkv]."""
        d = self.head_dim
        self.k[layer].view(-1, d).index_copy_(0, slots, k.reshape(-1, d))
        self.v[layer].view(-1, d).index_copy_(0, slots, v.reshape(-1, d))

    def read(self, layer: int, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError("contiguous slots are read as views (slot_view)")

    def slot_view(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K/V of layer `layer`: [slots, Hkv, slot_tokens, D]."""
        return self.k[layer], self.v[layer]
