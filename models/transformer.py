"""The decoder transformer shared by the LLaDA, Dream and Qwen2 layouts.

Pre-norm blocks: RMSNorm -> attention (RoPE, NeoX half rotation, optional GQA and q/k/v bias) ->
residual -> RMSNorm -> SwiGLU -> residual. Module names here are layout-neutral; the loader maps
each checkpoint layout's tensor names onto them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.attention import VarlenBatch, attend, attend_varlen
from models.config import ModelConfig
from models.kv_cache import KVCache, PagedKVCache, SlotKVCache


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in float32 like both reference implementations, then cast back.
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)

    def fused(self, x: torch.Tensor) -> torch.Tensor:
        """`forward` in one op where that is the same math: float32 (torch's rms_norm upcasts to
        float32, normalises, then applies the weight: bit for bit `forward` there), else `forward`."""
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        return self.forward(x)


class Rotary(nn.Module):
    def __init__(self, head_dim: int, theta: float, max_pos: int) -> None:
        super().__init__()
        inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
        freqs = torch.outer(torch.arange(max_pos, dtype=torch.float64), inv)
        emb = torch.cat([freqs, freqs], dim=-1)
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: [B, H, T, D]; positions: [T] or [B, T] absolute positions."""
        cos, sin = self.cos[positions], self.sin[positions]
        if positions.dim() == 2:
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        return self.rotate(x, cos, sin)

    @staticmethod
    def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x rotated by the cos/sin tables of its positions (broadcast against x)."""
        half = x.shape[-1] // 2
        rot = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return (x.float() * cos + rot.float() * sin).to(x.dtype)

    def signed_tables(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sign-folded sin [N, 1, D] of positions [N], for `rotate_signed`."""
        cos, sin = self.cos[positions], self.sin[positions]
        half = sin.shape[-1] // 2
        return cos[:, None], torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)[:, None]

    @staticmethod
    def rotate_signed(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
        """`rotate` in fewer ops, bit for bit: (-a) * b == a * (-b), so the half-swap's sign moves into sin."""
        h = x.float()
        return (h * cos + torch.roll(h, x.shape[-1] // 2, -1) * signed_sin).to(x.dtype)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        d, hd = cfg.hidden_size, cfg.head_dim
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, hd
        self.attn_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.q_proj = nn.Linear(d, cfg.num_heads * hd, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.num_kv_heads * hd, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.num_heads * hd, d, bias=False)
        self.mlp_norm = RMSNorm(d, cfg.rms_norm_eps)
        self.gate_proj = nn.Linear(d, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(d, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, d, bias=False)

    def project_qkv(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q [B, T, H, D], k and v [B, T, Hkv, D]; layouts with a QK-norm (Chameleon) override this."""
        b, t, _ = h.shape
        return (self.q_proj(h).view(b, t, self.num_heads, self.head_dim),
                self.k_proj(h).view(b, t, self.num_kv_heads, self.head_dim),
                self.v_proj(h).view(b, t, self.num_kv_heads, self.head_dim))

    def forward(self, x: torch.Tensor, positions: torch.Tensor, rotary: Rotary, mask: torch.Tensor | None,
                cache: KVCache | None, layer: int) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = (z.transpose(1, 2) for z in self.project_qkv(self.attn_norm(x)))
        q, k = rotary(q, positions), rotary(k, positions)
        if cache is not None:
            k, v = cache.window(layer, k, v)
        a = attend(q, k, v, mask).transpose(1, 2).reshape(b, t, -1)
        return self._mlp(x + self.o_proj(a))

    def forward_packed(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor], batch: VarlenBatch,
                       kv: PagedKVCache, layer: int) -> torch.Tensor:
        """x [N, D]: the packed windows of a batch (see VarlenBatch); rope: Rotary.signed_tables of their
        positions. The same math as `forward`, element for element, in fewer ops."""
        q, k, v = self.project_qkv(self.attn_norm.fused(x)[None])
        h = q.shape[2]
        qk = Rotary.rotate_signed(torch.cat([q[0], k[0]], dim=1), *rope)  # q and k in one rotation
        return self._mlp(x + self.o_proj(attend_varlen(qk[:, :h], qk[:, h:], v[0], batch, kv, layer)), fused=True)

    def _mlp(self, x: torch.Tensor, fused: bool = False) -> torch.Tensor:
        h = self.mlp_norm.fused(x) if fused else self.mlp_norm(x)
        return x + self.down_proj(nn.functional.silu(self.gate_proj(h)) * self.up_proj(h))


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.config = cfg
        self.embed = nn.Embedding(cfg.table_size, cfg.hidden_size)
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.table_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed.weight
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta, cfg.max_position_embeddings)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, cache: KVCache | None = None, commit: int = 0,
                last_only: bool = False) -> torch.Tensor:
        """Logits [B, T, vocab] for a window of tokens.

        input_ids: [B, T]. positions: absolute positions [T] or [B, T] (default: after the cache).
        mask: boolean [B|1, 1, T, prefix+T] (True = may attend), None = attend to everything.
        cache: prefix K/V; the window's K/V is written after it and the first `commit` window
        positions are kept. last_only: compute logits for the final position only (AR decoding).
        """
        x = self.hidden_states(self.embed(input_ids), positions, mask, cache, commit)
        if last_only:
            x = x[:, -1:]
        return self.lm_head(x)[..., : self.config.vocab_size]

    def hidden_states(self, embeds: torch.Tensor, positions: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None, cache: KVCache | None = None, commit: int = 0) -> torch.Tensor:
        """Final-norm hidden states [B, T, D] for input embeddings (what multimodal models feed in
        place of token ids); same contract as `forward` minus the LM head."""
        t = embeds.shape[1]
        if positions is None:
            start = cache.length if cache is not None else 0
            positions = torch.arange(start, start + t, device=embeds.device)
        x = embeds
        for i, layer in enumerate(self.layers):
            x = layer(x, positions, self.rotary, mask, cache, i)
        if cache is not None and commit:
            cache.commit(commit)
        return self.norm(x)

    def forward_packed(self, input_ids: torch.Tensor, batch: VarlenBatch, kv: PagedKVCache,
                       rows: torch.Tensor) -> torch.Tensor:
        """Logits [R, vocab] of the packed tokens `rows` for a batch of windows (the batched engine).

        input_ids: [N] every sequence's window, packed; batch: their positions, pool slots and masks.
        Only the rows a sampler needs go through the final norm and the LM head.
        """
        x = self.embed(input_ids)
        rope = self.rotary.signed_tables(batch.positions)
        for i, layer in enumerate(self.layers):
            x = layer.forward_packed(x, rope, batch, kv, i)
        return self.lm_head(self.norm.fused(x[rows]))[..., : self.config.vocab_size]

    def new_paged_cache(self, num_pages: int, page_size: int) -> PagedKVCache:
        p, c = self.embed.weight, self.config
        return PagedKVCache(c.num_layers, num_pages, page_size, c.num_kv_heads, c.head_dim, p.dtype, p.device)

    def new_slot_cache(self, num_slots: int, slot_pages: int, page_size: int) -> SlotKVCache:
        p, c = self.embed.weight, self.config
        return SlotKVCache(c.num_layers, num_slots, slot_pages, page_size, c.num_kv_heads, c.head_dim, p.dtype,
                           p.device)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        p = self.embed.weight
        c = self.config
        return KVCache(c.num_layers, batch, c.num_kv_heads, c.head_dim, capacity, p.dtype, p.device)
