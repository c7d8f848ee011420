"""Chameleon-7B decoder, the Orthus backbone (brief §1.1).

Pre-norm blocks: RMSNorm -> attention -> residual -> RMSNorm -> SwiGLU -> residual, RoPE (NeoX half
rotation), MHA (GQA also accepted). What sets Chameleon apart is the QK-norm; as in transformers'
`ChameleonAttention` / `ChameleonLayerNorm` (checked in the installed transformers 5.24 source):
- it is a LayerNorm applied to q and k right after the projections and BEFORE RoPE;
- q is viewed as [..., num_heads, head_dim] (k as [..., num_kv_heads, head_dim]) and the mean/variance
  are taken over head_dim only, with a fixed eps of 1e-5 (not rms_norm_eps);
- the affine weight and bias have shape [num_heads, head_dim]: every head has its own gamma/beta.
The module returns the final-RMSNorm hidden states, which both the LM head and the diffusion head
read (brief §1.1 "Conditioning").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.kv_cache import KVCache
from models.orthus.config import OrthusConfig
from models.transformer import Block, RMSNorm, Rotary

QK_NORM_EPS = 1e-5  # hard-coded in ChameleonLayerNorm.forward


class HeadLayerNorm(nn.Module):
    """Per-head LayerNorm: statistics over head_dim, a separate gamma/beta per head."""

    def __init__(self, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., num_heads, head_dim]."""
        return F.layer_norm(x, (x.shape[-1],), None, None, QK_NORM_EPS) * self.weight + self.bias


class DecoderLayer(Block):
    """The shared pre-norm block (models.transformer.Block) plus Chameleon's per-head QK-norm."""

    def __init__(self, cfg: OrthusConfig) -> None:
        super().__init__(cfg)  # type: ignore[arg-type]  # OrthusConfig has every field Block reads
        self.q_norm = HeadLayerNorm(cfg.num_heads, cfg.head_dim)
        self.k_norm = HeadLayerNorm(cfg.num_kv_heads, cfg.head_dim)

    def project_qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        q, k, v = super().project_qkv(h)  # [B, T, H, D]: the norm is per head, before RoPE
        return self.q_norm(q), self.k_norm(k), v


def causal_mask(key_valid: torch.Tensor, start: int, t: int) -> torch.Tensor:
    """Bool mask [B, 1, t, start+t] (True = attend) for a window of t queries at cache slots [start, start+t).

    key_valid: [B, >= start+t] marks real (non-padding) slots. Every query also sees its own slot: a
    left-padding query would otherwise see nothing and SDPA would give NaN, which then leaks into
    later layers through 0 * NaN in the value product even though no real query attends to it.
    """
    s = start + t
    q_slot = torch.arange(start, s, device=key_valid.device)
    k_slot = torch.arange(s, device=key_valid.device)
    causal = k_slot[None, :] <= q_slot[:, None]
    m = causal[None] & key_valid[:, None, :s]
    m = m | (k_slot[None, :] == q_slot[:, None])[None]
    return m.unsqueeze(1)


class ChameleonBackbone(nn.Module):
    def __init__(self, cfg: OrthusConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings)

    def forward(self, embeds: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cache: KVCache | None = None) -> torch.Tensor:
        """Final-norm hidden states [B, T, D] for a window of input embeddings [B, T, D].

        positions: [T] or [B, T] absolute positions (default: consecutive after the cache).
        mask: bool [B|1, 1, T, prefix+T], True = may attend (default: causal, no padding); see `causal_mask`.
        cache: prefix K/V; the window's K/V is appended and committed (autoregressive use).
        """
        t = embeds.shape[1]
        start = cache.length if cache is not None else 0
        if positions is None:
            positions = torch.arange(start, start + t, device=embeds.device)
        if mask is None:
            mask = causal_mask(torch.ones(1, start + t, dtype=torch.bool, device=embeds.device), start, t)
        x = embeds
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, self.rotary, mask, cache, i)
        if cache is not None:
            cache.commit(t)
        return self.norm(x)

    def rebuild_rotary(self) -> None:
        """Recompute the RoPE tables (non-persistent buffers) after building the module on the meta device."""
        c = self.config
        self.rotary = Rotary(c.head_dim, c.rope_theta, c.max_position_embeddings).to(self.embed.weight.device)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        p = self.embed.weight
        c = self.config
        return KVCache(c.num_layers, batch, c.num_kv_heads, c.head_dim, capacity, p.dtype, p.device)
