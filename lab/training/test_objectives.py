"""Training objectives: mask schedules, which tokens count, and the student/teacher relation."""

from __future__ import annotations

import torch

from lab.training.data import Batch
from lab.training.objectives import (
    ar_loss,
    d2f_block_ids,
    d2f_distill_loss,
    masked_diffusion_loss,
    monotonic_ratios,
    token_logits,
)
from models.conftest import MASK, tiny
from models.lora import adapter_disabled, apply_lora


def _batch(b: int = 4, length: int = 40) -> Batch:
    g = torch.Generator().manual_seed(0)
    return Batch(torch.randint(1, MASK, (b, length), generator=g), torch.tensor([5, 9, 12, 7][:b]),
                 torch.tensor([10, 12, 8, 20][:b]), torch.tensor([30, 40, 25, 36][:b]))


def test_monotonic_ratios_bounds_and_order() -> None:
    r = monotonic_ratios(256, 9, torch.Generator().manual_seed(1))
    assert r.shape == (256, 9)
    assert bool((r[:, 1:] >= r[:, :-1]).all())
    assert r.min() >= 0.2 and r[:, 0].max() < 0.7 and r.max() <= 0.7 + 1e-6


def test_d2f_block_ids_start_at_each_prompt_end() -> None:
    ids = d2f_block_ids(torch.tensor([3, 5]), 12, 4)
    assert ids[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3]
    assert ids[1].tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2]


def test_masked_diffusion_loss_masks_only_answer_tokens() -> None:
    model, batch = tiny("llada"), _batch()
    seen: list[torch.Tensor] = []
    model.embed.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].clone()))
    loss = masked_diffusion_loss(model, batch, torch.Generator().manual_seed(2))
    noisy = seen[0]
    pos = torch.arange(batch.ids.shape[1])[None]
    prompt = pos < batch.prompt_len[:, None]
    padding = pos >= batch.valid_len[:, None]
    assert not bool((noisy[prompt | padding] == MASK).any())
    assert bool((noisy[~prompt & ~padding] == MASK).any())
    kept = noisy != MASK
    assert torch.equal(noisy[kept], batch.ids[kept])
    assert loss.item() > 0
    assert torch.isclose(loss, masked_diffusion_loss(model, batch, torch.Generator().manual_seed(2)))


def test_fresh_student_equals_teacher_so_distill_loss_is_teacher_entropy() -> None:
    model, batch = tiny("llada"), _batch()
    apply_lora(model, ["q_proj", "k_proj", "v_proj", "o_proj"], r=4, alpha=4, dropout=0.0)
    x = batch.ids[:1]
    with adapter_disabled(model):
        base = model(x)
    assert torch.allclose(model(x), base)  # lora_B starts at zero
    loss = d2f_distill_loss(model, batch, torch.Generator().manual_seed(3), block_size=8)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads)
    assert not any(p.grad is not None for p in model.parameters() if not p.requires_grad)


def test_ar_loss_decreases_with_training() -> None:
    model, batch = tiny("qwen2"), _batch()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(4)
    first = ar_loss(model, batch, g).item()
    for _ in range(30):
        loss = ar_loss(model, batch, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_tied_tokens_are_masked_together_inside_the_answer_only() -> None:
    from lab.training.objectives import tie_masks

    ids = torch.tensor([[7, 1, 5, 2, 7, 5, 3, 7]])
    tied = torch.zeros(10, dtype=torch.bool)
    tied[5] = tied[7] = True
    answer = torch.tensor([[False, True, True, True, True, True, True, True]])
    masked = torch.zeros_like(answer)
    masked[0, 4] = True  # one copy of 7 is masked...
    out = tie_masks(ids, masked, answer, tied)
    assert out[0].tolist() == [False, False, False, False, True, False, False, True]  # ...so is the other
    assert torch.equal(tie_masks(ids, masked, answer, None), masked)


def test_decoding_state_masks_look_like_a_left_to_right_decoder() -> None:
    from lab.training.objectives import decoding_state_masks

    batch = _batch()
    g = torch.Generator().manual_seed(5)
    t = torch.full((4,), 0.5)
    window = 4
    for _ in range(20):
        m = decoding_state_masks(batch, t, g, window)
        for i in range(4):
            p, v = int(batch.prompt_len[i]), int(batch.valid_len[i])
            row = m[i].tolist()
            assert not any(row[:p]) and not any(row[v:])  # prompt and padding never masked
            first = row.index(True) if True in row[p:v] else v
            # a clean prefix, then at most `window` mixed positions, then everything masked
            assert all(row[first + window: v])


def test_decoding_frac_switches_the_mask_shape() -> None:
    model, batch = tiny("llada"), _batch()
    seen: list[torch.Tensor] = []
    model.embed.register_forward_hook(lambda _m, inp, _o: seen.append(inp[0].clone()))
    masked_diffusion_loss(model, batch, torch.Generator().manual_seed(6), decoding_frac=1.0, window=4)
    noisy = seen[0] == MASK
    for i in range(4):
        v = int(batch.valid_len[i])
        assert bool(noisy[i, v - 1])  # the canvas end is always masked in a decoding state
        hits = noisy[i, : v].nonzero().flatten().tolist()
        assert hits == list(range(hits[0], v)) or len(set(range(hits[0], v)) - set(hits)) <= 4


def test_token_logits_shift_only_for_dream() -> None:
    """Dream reads token i from position i-1 (as its decoders do); LLaDA from position i."""
    batch = _batch()
    for layout, shift in (("llada", 0), ("dream", 1)):
        model = tiny(layout)
        raw = model(batch.ids, mask=batch.key_mask())
        got = token_logits(model, batch.ids, batch.key_mask())
        assert got.shape == raw.shape
        torch.testing.assert_close(got[:, 1:], raw[:, 1 - shift: raw.shape[1] - shift])
