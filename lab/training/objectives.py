"""The three training objectives.

- `masked_diffusion_loss`: LLaDA SFT. Mask each answer token with one ratio t ~ U(eps, 1) per
  sample, full bidirectional attention, cross-entropy on masked tokens weighted by 1/t.
- `d2f_distill_loss`: D2F asymmetric distillation (D2F-train/utils/loss.py). Answer blocks of 16
  get monotonically increasing mask ratios; the student (LoRA on) sees the block-causal mask, the
  teacher (same network, LoRA off) the full mask, both the same noisy sequence; soft-target CE on
  masked tokens weighted by 1/ratio of the token's block.
- `ar_loss`: next-token cross-entropy on the answer and its first EOS, causal mask.

Random draws come from a CPU generator and are moved to the batch's device, so a seed gives the
same masks on every device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lab.training.data import Batch
from models.attention import causal_ids, mask_from_ids
from models.lora import adapter_disabled
from models.transformer import Transformer

EPS = 1e-3


def _answer_positions(batch: Batch) -> torch.Tensor:
    """The generation canvas of each sample: after the prompt, before the padding."""
    pos = torch.arange(batch.ids.shape[1], device=batch.ids.device)[None, :]
    return (pos >= batch.prompt_len[:, None]) & (pos < batch.valid_len[:, None])


def _rand(gen: torch.Generator, *shape: int, device: torch.device) -> torch.Tensor:
    return torch.rand(*shape, generator=gen).to(device)


def token_logits(model: Transformer, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits indexed by the token they predict: for shifted (Dream-layout) models the token at
    position i is read from position i-1, as at decoding time. Position 0 is the prompt, never a
    target, so repeating its row keeps the shape without entering any loss."""
    logits = model(ids, mask=mask)
    if model.config.shift_logits:
        logits = torch.cat([logits[:, :1], logits[:, :-1]], dim=1)
    return logits


def tie_masks(ids: torch.Tensor, masked: torch.Tensor, answer: torch.Tensor, tied: torch.Tensor | None) -> torch.Tensor:
    """Mask every answer copy of a masked `tied` token (e.g. numbers).

    In "so 3 + 5 = 8. He buys 4, so 8 + 4 = 12." the result 8 reappears as the next step's left
    operand. With independent masking the model learns to copy it from there instead of adding,
    and fails at decoding time, when the next step does not exist yet. Masking all copies together
    removes that shortcut, so the only way to predict a masked result is to compute it.
    """
    if tied is None:
        return masked
    tied = tied.to(ids.device)
    hit = torch.zeros(ids.shape[0], tied.shape[0], dtype=torch.bool, device=ids.device)
    sel = masked & tied[ids]
    hit[sel.nonzero()[:, 0], ids[sel]] = True
    return masked | (hit.gather(1, ids) & answer)


def decoding_state_masks(batch: Batch, t: torch.Tensor, gen: torch.Generator, window: int) -> torch.Tensor:
    """Masks shaped like a left-to-right decoder's states: a clean prefix of the answer, then a
    window partly masked with ratio t (the block being decoded), then everything masked."""
    ids = batch.ids
    b, length = ids.shape
    pos = torch.arange(length, device=ids.device)[None, :]
    cut = batch.prompt_len + (_rand(gen, b, device=ids.device) * (batch.answer_len + 1).float()).long()
    partial = (pos >= cut[:, None]) & (pos < cut[:, None] + window)
    coin = _rand(gen, b, length, device=ids.device) < t[:, None]
    return ((partial & coin) | (pos >= cut[:, None] + window)) & _answer_positions(batch)


def masked_diffusion_loss(model: Transformer, batch: Batch, gen: torch.Generator,
                          tied: torch.Tensor | None = None, decoding_frac: float = 0.0,
                          window: int = 32) -> torch.Tensor:
    """LLaDA SFT loss. With `decoding_frac` > 0 that fraction of samples gets decoding-state masks
    (`decoding_state_masks`, weight 1) instead of uniform ones: the states a semi-autoregressive
    sampler actually visits, where a tiny model's training budget pays off most."""
    ids = batch.ids
    b, length = ids.shape
    dev = ids.device
    answer = _answer_positions(batch)
    t = (1 - EPS) * _rand(gen, b, device=dev) + EPS
    uniform = (_rand(gen, b, length, device=dev) < t[:, None]) & answer
    weight = (1.0 / t)[:, None].expand(b, length)
    if decoding_frac > 0:
        dec = (_rand(gen, b, device=dev) < decoding_frac)[:, None]
        uniform = torch.where(dec, decoding_state_masks(batch, t, gen, window), uniform)
        weight = torch.where(dec, torch.ones_like(weight), weight)
    masked = tie_masks(ids, uniform, answer, tied)
    noisy = torch.where(masked, model.config.mask_token_id, ids)
    logits = token_logits(model, noisy, batch.key_mask())
    ce = F.cross_entropy(logits[masked], ids[masked], reduction="none")
    return (ce * weight[masked]).sum() / answer.sum()


def monotonic_ratios(b: int, num_blocks: int, gen: torch.Generator) -> torch.Tensor:
    """Per-block mask ratios, non-decreasing across blocks: p0 in [0.2, 0.7), ending at <= 0.7."""
    p0 = torch.rand(b, generator=gen) / 2 + 0.2
    steps = torch.rand(b, max(num_blocks - 1, 0), generator=gen) * ((0.7 - p0) / max(num_blocks - 1, 1))[:, None]
    ratios = torch.cat([p0[:, None], p0[:, None] + steps.cumsum(-1)], dim=1)
    return ratios.clamp(max=1.0)


def d2f_block_ids(prompt_len: torch.Tensor, length: int, block_size: int) -> torch.Tensor:
    """[B, L] block ids for a batch with per-sample prompt lengths (prompt = block 0)."""
    pos = torch.arange(length, device=prompt_len.device)[None, :]
    gen = torch.div(pos - prompt_len[:, None], block_size, rounding_mode="floor") + 1
    return torch.where(pos < prompt_len[:, None], torch.zeros_like(gen), gen)


def d2f_distill_loss(model: Transformer, batch: Batch, gen: torch.Generator, block_size: int = 16,
                     tied: torch.Tensor | None = None) -> torch.Tensor:
    ids = batch.ids
    b, length = ids.shape
    bid = d2f_block_ids(batch.prompt_len, length, block_size)
    num_blocks = int(bid.max())
    ratios = monotonic_ratios(b, num_blocks, gen).to(ids.device)
    answer = _answer_positions(batch)
    p_tok = torch.gather(ratios, 1, (bid - 1).clamp(min=0))
    masked = tie_masks(ids, (_rand(gen, b, length, device=ids.device) < p_tok) & answer, answer, tied)
    noisy = torch.where(masked, model.config.mask_token_id, ids)
    with torch.no_grad(), adapter_disabled(model):
        teacher = token_logits(model, noisy, batch.key_mask())[masked].softmax(-1)
    student = token_logits(model, noisy, mask_from_ids(bid, bid) & batch.key_mask())[masked]
    ce = F.cross_entropy(student, teacher, reduction="none")
    return (ce / p_tok[masked]).mean()


def ar_loss(model: Transformer, batch: Batch, gen: torch.Generator) -> torch.Tensor:
    ids = batch.ids
    length = ids.shape[1]
    ids_c = causal_ids(length, ids.device)
    logits = model(ids[:, :-1], mask=mask_from_ids(ids_c[:-1], ids_c[:-1]))
    tgt_pos = torch.arange(1, length, device=ids.device)[None, :]
    start = batch.prompt_len[:, None]
    valid = (tgt_pos >= start) & (tgt_pos <= start + batch.answer_len[:, None])  # answer + first EOS
    return F.cross_entropy(logits[valid], ids[:, 1:][valid])
