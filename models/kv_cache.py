"""KV cache for finished blocks.

Each forward writes the K/V of its whole window right after the committed prefix, attends over
prefix + window, and then keeps only the first `commit` window positions. Every decoder's window
starts exactly at the end of the committed prefix (D2F retires blocks in order; Fast-dLLM's
window starts at the current block; AR's at the next token), so uncommitted entries are simply
overwritten by the next forward: no concatenation, no copies.
"""

from __future__ import annotations

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
