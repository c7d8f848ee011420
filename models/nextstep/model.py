"""`NextStep`: the Qwen2 backbone (`models.transformer.Transformer`), image projectors and FM head.

Brief §2.1-§2.2: text and image tokens share one causal decoder with 1D RoPE. Image tokens enter as
`image_in_projector(token)` in place of the word embedding (at `<|image_placeholder|>` slots of a
prompt, or fed back one by one while generating); the last hidden state (after the final RMSNorm)
goes through `image_out_projector` into the flow-matching head. The LM head exists (and is loaded)
but is not used to generate images.

`Transformer.forward` takes token ids only, so `hidden` below runs its submodules (`embed`,
`layers`, `norm`, `rotary`) on input embeddings directly; nothing in models/transformer.py changes.
"""

from __future__ import annotations

import torch
from torch import nn

from models.kv_cache import KVCache
from models.nextstep.config import NextStepConfig
from models.nextstep.head import FlowMatchingHead
from models.nextstep.projectors import ImageInProjector, ImageOutProjector
from models.transformer import Transformer


def causal_mask(valid: torch.Tensor) -> torch.Tensor:
    """[B, 1, T, T] boolean mask (True = may attend) for a left-padded batch; valid: [B, T].

    Real tokens see earlier real tokens. A pad position sees only itself: a row with no visible key
    would make SDPA return NaN, and NaN K/V would then poison real rows through 0·NaN.
    """
    t = valid.shape[1]
    idx = torch.arange(t, device=valid.device)
    causal = idx[None, :] <= idx[:, None]
    keys = valid[:, None, :] | (idx[None, :] == idx[:, None])[None]
    return (causal[None] & keys).unsqueeze(1)


def decode_mask(valid: torch.Tensor, end: int) -> torch.Tensor | None:
    """[B, 1, 1, end] mask for one new position attending to keys [0, end); None when nothing is padded."""
    v = valid[:, :end]
    return None if bool(v.all()) else v[:, None, None, :]


class NextStep(nn.Module):
    def __init__(self, cfg: NextStepConfig) -> None:
        super().__init__()
        self.config = cfg
        self.backbone = Transformer(cfg.backbone_config())
        self.image_in_projector = ImageInProjector(cfg.token_dim, cfg.hidden_size)
        self.image_out_projector = ImageOutProjector(cfg.hidden_size)
        self.image_head = FlowMatchingHead(cfg.token_dim, cfg.hidden_size, cfg.fm_head_dim, cfg.fm_head_layers)

    # ---- inputs ----------------------------------------------------------------------------------

    def embed(self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Word embeddings, with `image_in_projector(image_tokens)` written into the placeholder slots.

        image_tokens: (M, 64), one row per placeholder in row-major order of `input_ids` (the
        reference's `emb[ids == placeholder] = image_in_projector(tokens)`).
        """
        x = self.backbone.embed(input_ids)
        slots = input_ids == self.config.image_placeholder_id
        n = int(slots.sum())
        if n == 0:
            return x
        if image_tokens is None or image_tokens.shape[0] != n:
            got = None if image_tokens is None else image_tokens.shape[0]
            raise ValueError(f"{n} image placeholder slots but {got} image tokens")
        proj = self.image_in_projector(image_tokens).to(x.dtype)
        return x.masked_scatter(slots.unsqueeze(-1), proj)

    # ---- backbone ------------------------------------------------------------------------------

    def hidden(self, embeds: torch.Tensor, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
               cache: KVCache | None = None, commit: int = 0) -> torch.Tensor:
        """Final-norm hidden states [B, T, D] for input embeddings [B, T, D].

        Same contract as `Transformer.forward` (positions default to right after the cache; the
        window's K/V is written after the cached prefix and `commit` of them are kept), minus the
        LM head. Positions ignore left padding like the reference (`position_ids = cache_position`);
        RoPE scores depend only on position differences, so a constant per-row offset is harmless.
        """
        return self.backbone.hidden_states(embeds, positions, mask, cache, commit)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.backbone.lm_head(hidden)[..., : self.config.vocab_size]

    def forward(self, input_ids: torch.Tensor, image_tokens: torch.Tensor | None = None,
                positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, commit: int = 0) -> torch.Tensor:
        """Hidden states for a window of ids (image tokens in the placeholder slots)."""
        return self.hidden(self.embed(input_ids, image_tokens), positions, mask, cache, commit)

    # ---- image path ----------------------------------------------------------------------------

    def condition(self, hidden: torch.Tensor) -> torch.Tensor:
        """Last hidden state(s) -> flow-matching head condition."""
        return self.image_out_projector(hidden)

    def new_cache(self, batch: int, capacity: int) -> KVCache:
        return self.backbone.new_cache(batch, capacity)
