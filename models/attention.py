"""Attention masks as block ids, and the attention op.

Every mask Tessera needs is "query q may see key k iff block(k) <= block(q)" for some block
numbering of absolute positions:
- D2F block-causal: the prompt is block 0 (bidirectional within itself), then blocks of
  `block_size` counted from the end of the prompt, bidirectional within, causal across;
- causal (AR): every position is its own block;
- full bidirectional (LLaDA/Dream teachers, vanilla and Fast-dLLM decoding): no mask at all.
The same rule is used for training and for every inference forward, prefill and decode alike.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
