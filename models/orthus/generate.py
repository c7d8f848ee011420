"""Orthus decoding loops: image generation (T2I and editing) and greedy text (understanding).

All rows of a call (requests x CFG rows) share one batched, KV-cached backbone forward per step.
Rows are left-padded; each row's positions count only its own tokens, and with `pad_to` (serving) the
padded length is the request's own too, so a row's result does not depend on what it is batched with,
bit for bit in bfloat16 on CPU (see `Rows`, `patch_embeddings`). Image loop (brief §1.2, `_sample_orthus`):
    prefill(prompt + sep + BOI) -> h;  repeat N times:
        x = head.sample(h rows, CFG) / 0.1   (one latent per request, shared by its CFG rows)
        h = backbone(softVQ(x))              (the same embedding is appended to every CFG row)
The original enters image mode by sampling BOI under an "image-only" logits processor; here BOI is
appended directly, which is the only token that processor lets start an image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from models.orthus.backbone import ChameleonBackbone, causal_mask
from models.orthus.config import OrthusConfig
from models.orthus.head import DiffusionHead, Generators, Guidance, make_scheduler
from models.orthus.prompt import Prompt
from models.orthus.vision import SoftVQEmbedding, from_head_space

if TYPE_CHECKING:
    from diffusers import DDIMScheduler, DDPMScheduler


class Network(Protocol):
    """What the loops run of `models.orthus.model.Orthus`, which calls them: typing them against this
    instead of the class keeps the imports one-way (model -> generate)."""

    config: OrthusConfig
    backbone: ChameleonBackbone
    head: DiffusionHead
    vision: SoftVQEmbedding
    lm_head: nn.Linear

    @property
    def device(self) -> torch.device: ...

    def embed_prompt(self, ids: torch.Tensor, latents: Sequence[torch.Tensor | None] | None = None) -> torch.Tensor:
        ...


# Serving hooks, called between decoding steps (they never change results; raising stops decoding):
PatchHook = Callable[[int, torch.Tensor], None]  # (patches done, newest latents [B, C])
TokenHook = Callable[[list[int | None]], None]  # newest token per row, None once the row has stopped


class Rows:
    """R prompt rows decoded together: one left-padded prefill, then one position per step."""

    def __init__(self, model: Network, prompts: Sequence[Prompt], extra_capacity: int,
                 width: int | None = None) -> None:
        """width: pad every row to this many tokens (default: the longest row).

        Positions already count each row's own tokens only, but SDPA still reduces over the padded key
        length in blocks that depend on it: a one-ulp difference in bfloat16 that image sampling
        amplifies. Serving therefore pads to a length that depends on the request alone.
        """
        cfg = model.config
        self.model = model
        dev = model.device
        lens = [len(p.ids) for p in prompts]
        r = len(prompts)
        if width is not None and width < max(lens):
            raise ValueError(f"cannot pad rows of up to {max(lens)} tokens to {width}")
        width = width if width is not None else max(lens)
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        ids = torch.full((r, width), pad, dtype=torch.long, device=dev)
        self.key_valid = torch.zeros(r, width + extra_capacity, dtype=torch.bool, device=dev)
        for i, p in enumerate(prompts):
            ids[i, width - lens[i]:] = torch.tensor(p.ids, dtype=torch.long, device=dev)
            self.key_valid[i, width - lens[i]:width] = True
        valid = self.key_valid[:, :width]
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        self.next_pos = positions[:, -1] + 1
        self.cache = model.backbone.new_cache(r, width + extra_capacity)
        embeds = model.embed_prompt(ids, [p.latents for p in prompts])
        h = model.backbone(embeds, positions, causal_mask(self.key_valid, 0, width), self.cache)
        self.last = h[:, -1]  # [R, D]: the state that predicts the next token / patch

    def step(self, embeds: torch.Tensor) -> torch.Tensor:
        """Append one input embedding per row [R, D]; returns the new last hidden states [R, D]."""
        start = self.cache.length
        self.key_valid[:, start] = True
        mask = causal_mask(self.key_valid, start, 1)
        h = self.model.backbone(embeds[:, None], self.next_pos[:, None], mask, self.cache)
        self.next_pos = self.next_pos + 1
        self.last = h[:, 0]
        return self.last


@torch.no_grad()
def image_loop(model: Network, rows: Sequence[Prompt], guidance: Guidance | None, steps: int,
               generator: Generators = None, num_patches: int | None = None,
               scheduler: DDIMScheduler | DDPMScheduler | None = None,
               on_patch: PatchHook | None = None, pad_to: int | None = None) -> torch.Tensor:
    """Generate one image's latents [B, N, latent_dim] per request.

    rows: group-major CFG rows, len = guidance.rows * B (e.g. [cond_0..cond_B-1, uncond_0..uncond_B-1]).
    on_patch: called after each patch (progress reporting and cancellation in the image worker).
    pad_to: left-pad the rows as given to this many tokens (see `Rows`); default: the longest row.
    """
    cfg = model.config
    groups = guidance.rows if guidance is not None else 1
    if len(rows) % groups:
        raise ValueError(f"{len(rows)} rows do not split into {groups} CFG groups")
    n = num_patches or cfg.image_seq_length
    scheduler = scheduler or make_scheduler("ddim")
    width = None if pad_to is None else pad_to + 1  # every row gains the BOI
    state = Rows(model, [Prompt([*p.ids, cfg.boi_token_id], p.latents) for p in rows], extra_capacity=n, width=width)
    table = model.backbone.embed.weight
    out: list[torch.Tensor] = []
    for k in range(n):
        x = model.head.sample(state.last, scheduler, steps, generator, guidance)
        z = from_head_space(x, cfg.latent_scale)  # [B, C]
        out.append(z)
        if on_patch is not None:
            on_patch(k + 1, z)
        if k + 1 < n:  # the last patch needs no further backbone step
            state.step(patch_embeddings(model, z, table).repeat(groups, 1))
    return torch.stack(out, dim=1)


def patch_embeddings(model: Network, z: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Soft-VQ embeddings [B, D] of the newest patches z [B, C], one request at a time.

    The soft-VQ distances and mix are float32 matmuls over the codebook, and CPU BLAS picks its kernel
    by row count (MKL: another path below 4 rows), so a request alone and the same request in a batch
    differed in the last bits (~1e-4 once cast to bfloat16), which the next patches amplified (20/255
    pixels on the trained checkpoint). Row by row costs B small matmuls per patch, nothing next to the
    backbone step.
    """
    return torch.cat([model.vision(z[i:i + 1], table) for i in range(z.shape[0])])


def banned_text_tokens(model: Network) -> torch.Tensor:
    """Ids the "text-only" mode suppresses: image-token rows, BOI, EOI and the placeholder (brief §1.3)."""
    cfg = model.config
    rows = torch.arange(cfg.image_token_offset, cfg.image_token_offset + cfg.codebook_size)
    specials = torch.tensor([cfg.boi_token_id, cfg.eoi_token_id, cfg.image_token_id])
    return torch.cat([rows, specials]).to(model.device)


@torch.no_grad()
def text_loop(model: Network, prompts: Sequence[Prompt], max_new_tokens: int,
              on_token: TokenHook | None = None) -> list[list[int]]:
    """Greedy text continuation of each prompt; stops at sep or EOS (not included in the result).

    on_token: called after each step with every row's new token (streaming in the understanding worker).
    """
    cfg = model.config
    stops = {t for t in (cfg.sep_token_id, cfg.eos_token_id) if t is not None}
    banned = banned_text_tokens(model)
    state = Rows(model, prompts, extra_capacity=max_new_tokens)
    out: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for k in range(max_new_tokens):
        logits = model.lm_head(state.last).float()
        logits[:, banned] = float("-inf")
        tok = logits.argmax(-1)
        fresh: list[int | None] = [None] * len(prompts)
        for i, t in enumerate(tok.tolist()):
            if not done[i]:
                if t in stops:
                    done[i] = True
                else:
                    out[i].append(t)
                    fresh[i] = t
        if on_token is not None:
            on_token(fresh)
        if all(done) or k + 1 == max_new_tokens:
            break
        state.step(model.backbone.embed(tok))  # finished rows keep stepping; their output is ignored
    return out
