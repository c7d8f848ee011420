"""Vanilla, Fast-dLLM and AR decoders, and the pieces they share."""

from __future__ import annotations

import pytest
import torch

from models.attention import causal_ids, mask_from_ids
from models.conftest import EOS, MASK, bias_logit, tiny
from models.decoders import (
    ARDecoder,
    FastDLLMConfig,
    FastDLLMDecoder,
    VanillaConfig,
    VanillaDecoder,
    make_decoder,
)
from models.decoders.base import PrefixEmitter
from models.decoders.vanilla import transfer_schedule
from models.sampling import SamplingParams, sample


def tokens(events) -> list[int]:
    return [t for e in events for t in e.token_ids]


def test_transfer_schedule_splits_evenly() -> None:
    assert transfer_schedule(10, 4) == [3, 3, 2, 2]
    assert sum(transfer_schedule(32, 32)) == 32


def test_prefix_emitter_waits_for_holes_and_stops_at_eos() -> None:
    em = PrefixEmitter(MASK, frozenset({EOS}))
    assert em.take(torch.tensor([5, MASK, 7])) == [5]
    assert em.take(torch.tensor([5, 6, 7, MASK])) == [6, 7]
    assert em.take(torch.tensor([5, 6, 7, 8, EOS, 9])) == [8]
    assert em.stopped and em.take(torch.tensor([5, 6, 7, 8, EOS, 9])) == []


def test_vanilla_one_token_per_forward_and_exact_length() -> None:
    model = tiny("llada", seed=1)
    bias_logit(model, EOS, -1e4)  # never predict EOS so the whole budget is generated
    events = list(VanillaDecoder(model, VanillaConfig(block_size=8)).decode([1, 2, 3], SamplingParams(max_tokens=20)))
    assert len(tokens(events)) == 20
    assert events[-1].forwards == 20 and events[-1].finish_reason == "length"


def test_vanilla_fewer_steps_decode_several_tokens_per_step() -> None:
    model = tiny("llada", seed=1)
    bias_logit(model, EOS, -1e4)
    dec = VanillaDecoder(model, VanillaConfig(block_size=8, steps_per_block=2))
    events = list(dec.decode([1, 2, 3], SamplingParams(max_tokens=16)))
    assert events[-1].forwards == 4 and len(tokens(events)) == 16


def test_fast_dllm_threshold_zero_decodes_a_block_per_forward(diffusion_model) -> None:
    bias_logit(diffusion_model, EOS, -1e4)
    dec = FastDLLMDecoder(diffusion_model, FastDLLMConfig(block_size=8, threshold=0.0))
    events = list(dec.decode([1, 2, 3, 4], SamplingParams(max_tokens=24)))
    assert len(tokens(events)) == 24 and events[-1].forwards == 3


def test_fast_dllm_threshold_one_commits_one_token_per_forward() -> None:
    model = bias_logit(tiny("llada", seed=2), EOS, -1e4)
    dec = FastDLLMDecoder(model, FastDLLMConfig(block_size=8, threshold=1.0))
    events = list(dec.decode([1, 2, 3], SamplingParams(max_tokens=16)))
    assert len(tokens(events)) == 16 and events[-1].forwards == 16


def test_ar_matches_full_recompute_greedy() -> None:
    model = tiny("qwen2", seed=3)
    bias_logit(model, EOS, -1e4)
    prompt = [4, 5, 6, 7]
    events = list(ARDecoder(model).decode(prompt, SamplingParams(max_tokens=12)))
    got = tokens(events)
    assert len(got) == 12 and events[-1].forwards == 12
    seq = list(prompt)
    for _ in range(12):  # the same tokens without any cache
        ids = causal_ids(len(seq))
        seq.append(int(model(torch.tensor([seq]), mask=mask_from_ids(ids, ids))[0, -1].argmax()))
    assert got == seq[len(prompt):]


def test_ar_stops_at_eos() -> None:
    model = tiny("qwen2", seed=3)
    bias_logit(model, EOS, 1e4)
    events = list(ARDecoder(model).decode([4, 5], SamplingParams(max_tokens=12)))
    assert tokens(events) == [] and events[-1].finish_reason == "stop"


def test_sampler_greedy_top_p_and_seed() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0]])
    tok, conf = sample(logits, SamplingParams(), None)
    assert int(tok) == 1 and conf.item() == pytest.approx(logits.softmax(-1)[0, 1].item())
    p = SamplingParams(temperature=1.0, top_p=0.5, seed=0)
    draws = {int(sample(logits, p, p.generator())[0]) for _ in range(20)}
    assert draws == {1}  # token 1 alone holds > 50% of the mass
    p2 = SamplingParams(temperature=5.0, seed=11)
    g1, g2 = p2.generator(), p2.generator()
    big = torch.zeros(64, 4)
    assert torch.equal(sample(big, p2, g1)[0], sample(big, p2, g2)[0])


def test_params_and_factory_validate() -> None:
    for bad in ({"temperature": -1}, {"top_p": 0.0}, {"max_tokens": 0}):
        with pytest.raises(ValueError):
            SamplingParams(**bad)
    with pytest.raises(ValueError):
        make_decoder(tiny("llada"), "beam")
    with pytest.raises(ValueError):
        make_decoder(tiny("qwen2"), "ar", block_size=4)
    with pytest.raises(ValueError):
        ARDecoder(tiny("llada"))
