"""The batched engine against the single-sequence decoders, on the real tiny checkpoints (CPU,
float32): every request's greedy output, and its seeded samples, are what it gets decoded alone,
with mixed prompt lengths, requests joining mid-flight, a token budget, preemption, both batch
layouts; plus deadlines, the adaptive policy and the KV pool's accounting."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from models.checkpoint import load_model
from models.decoders import make_decoder
from models.engine import AdaptivePolicy, DeadlineExceeded, EngineConfig, TextEngine, TextRequest
from models.engine.core import EngineCore
from models.engine.output import OutputWriter
from models.engine.request import Plan, RequestStats, TextDelta
from models.engine.sequence import Sequence
from models.engine.text_engine import tokenizer_dir
from models.kv_cache import SlotKVCache
from models.sampling import SamplingParams
from models.tokenizer import TextTokenizer
from models.transformer import Transformer

CKPT = Path(__file__).resolve().parents[2] / "checkpoints"
STUDENT, AR = CKPT / "arith-d2f-lora", CKPT / "arith-qwen2-ar"
TEACHER = CKPT / "arith-dream-teacher"  # the D2F adapter's base: Fast-dLLM and vanilla decode it
# Held-out-style questions of different lengths (the bench's problems are drawn in lab/, which
# models/ does not import).
QUESTIONS = [
    "Ben has 14 pens. He finds 7 more. He uses 1. He gets 2 more. How many pens does Ben have now?",
    "Noah has 19 pens. He gives 5. He uses 2. He uses 1. He wins 7 more. How many pens does Noah have now?",
    "Tom has 14 books. He gets 2 more. He wins 3 more. He gives 1. He uses 2. He sells 9. "
    "How many books does Tom have now?",
    "Jack has 7 shells. He buys 8 more. He gets 9 more. He uses 1. He loses 2. He gives 1. He loses 1. "
    "How many shells does Jack have now?",
    "Ben has 14 cards. He gives 2. He buys 4 more. He gives 6. He sells 3. He finds 3 more. He wins 4 more. "
    "He uses 2. How many cards does Ben have now?",
    "Leo has 19 pens. He wins 1 more. He loses 8. He uses 2. He sells 1. He finds 5 more. He uses 8. "
    "He wins 4 more. He uses 5. How many pens does Leo have now?",
]
METHODS = {"d2f": STUDENT, "fast-dllm": TEACHER, "ar": AR}


@pytest.fixture(scope="module")
def models() -> dict[str, Transformer]:
    torch.set_num_threads(1)
    return {m: load_model(p) for m, p in METHODS.items()}


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer(tokenizer_dir(STUDENT))


def prompts(tok: TextTokenizer) -> list[list[int]]:
    return [tok.encode_prompt(q) for q in QUESTIONS]


def alone(model: Transformer, method: str, prompt: list[int], params: SamplingParams,
          **options: object) -> tuple[list[int], int]:
    """Tokens and forwards of the single-sequence reference decoder."""
    events = list(make_decoder(model, method, **options).decode(prompt, params))
    return [t for e in events for t in e.token_ids], events[-1].forwards


class Collected:
    def __init__(self) -> None:
        self.deltas: list[TextDelta] = []
        self.error: BaseException | None = None

    def __call__(self, item: TextDelta | BaseException) -> None:
        if isinstance(item, BaseException):
            self.error = item
        else:
            self.deltas.append(item)

    @property
    def tokens(self) -> list[int]:
        return [t for d in self.deltas for t in d.token_ids]


def sequence(model: Transformer, method: str, prompt: list[int], params: SamplingParams, tok: TextTokenizer,
             **options: object) -> tuple[Sequence, Collected]:
    out = Collected()
    plan = Plan(TextRequest("", params), prompt, params, make_decoder(model, method, **options))
    stats = RequestStats("")
    return Sequence(plan, stats, OutputWriter(tok, 0, stats), out), out


def run_core(core: EngineCore, seqs: list[Sequence], join_after: int = 0, every: int = 2) -> int:
    """Add `join_after` sequences, then one more every `every` steps (joining mid-flight); step to the end."""
    steps, pending = 0, list(seqs)
    for s in pending[:join_after]:
        core.add(s)
    pending = pending[join_after:]
    while pending or core.has_work():
        if pending and steps % every == 0:
            core.add(pending.pop(0))
        core.step()
        steps += 1
        assert steps < 5000
    return steps


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("kv_layout", ["paged", "slots"])
def test_greedy_batched_equals_each_request_decoded_alone(models: dict[str, Transformer], tok: TextTokenizer,
                                                          method: str, layout: str, kv_layout: str) -> None:
    model = models[method]
    params = SamplingParams(max_tokens=96)
    core = EngineCore(model, EngineConfig(max_num_seqs=8, layout=layout, kv_layout=kv_layout))  # type: ignore[arg-type]
    assert core.runner.kv.contiguous == (kv_layout == "slots")
    runs = [sequence(model, method, p, params, tok) for p in prompts(tok)]
    run_core(core, [s for s, _ in runs], join_after=2)
    for (s, out), p in zip(runs, prompts(tok), strict=True):
        want, forwards = alone(model, method, p, params)
        assert out.error is None and out.tokens == want
        assert s.stats.forwards == forwards == out.deltas[-1].forwards  # one forward per batched step it took part in
        assert out.deltas[-1].finished and s.stats.state == "finished"
    assert core.runner.kv.free_pages == core.runner.kv.usable_pages  # every page came back


@pytest.mark.parametrize("method", list(METHODS))
def test_every_id_of_an_eos_list_ends_a_generation(models: dict[str, Transformer], tok: TextTokenizer,
                                                   method: str) -> None:
    """config.json may give eos_token_id as a list (transformers: any of them stops). With the full stop
    added to the tiny models' EOS, every answer ends at its first "." (finish "stop"), alone and batched:
    the stop only cuts, it changes no token before it (block-causal: no block sees a later one)."""
    model, params, dot = models[method], SamplingParams(max_tokens=96), tok.token_id(".")
    assert dot is not None
    full = [alone(model, method, p, params)[0] for p in prompts(tok)]
    assert all(dot in f for f in full)  # each answer has a "." before its end: the test bites
    want = [f[: f.index(dot)] for f in full]
    eos = model.config.eos_token_id
    model.config.eos_token_id = [eos, dot]  # type: ignore[list-item]
    try:
        assert [alone(model, method, p, params)[0] for p in prompts(tok)] == want
        core = EngineCore(model, EngineConfig(max_num_seqs=8))
        runs = [sequence(model, method, p, params, tok) for p in prompts(tok)]
        run_core(core, [s for s, _ in runs], join_after=2)
        for (_, out), w in zip(runs, want, strict=True):
            assert out.error is None and out.tokens == w and out.deltas[-1].finish_reason == "stop"
    finally:
        model.config.eos_token_id = eos


@pytest.mark.parametrize("method", list(METHODS))
def test_seeded_samples_do_not_depend_on_batch_mates(models: dict[str, Transformer], tok: TextTokenizer,
                                                     method: str) -> None:
    model = models[method]
    core = EngineCore(model, EngineConfig(max_num_seqs=8))
    ps = prompts(tok)
    params = [SamplingParams(temperature=0.9, top_p=0.95, max_tokens=64, seed=100 + i) for i in range(len(ps))]
    params[1] = SamplingParams(max_tokens=64)  # a greedy request among sampled ones
    runs = [sequence(model, method, p, sp, tok) for p, sp in zip(ps, params, strict=True)]
    run_core(core, [s for s, _ in runs], join_after=3, every=1)
    for (_, out), p, sp in zip(runs, ps, params, strict=True):
        assert out.tokens == alone(model, method, p, sp)[0]


def test_d2f_requests_keep_their_own_thresholds_and_blocks(models: dict[str, Transformer],
                                                          tok: TextTokenizer) -> None:
    model, ps = models["d2f"], prompts(tok)
    options = [{"block_size": 16, "tau_add": 0.9}, {"tau_conf": 0.7, "tau_act": 0.8}, {}, {"block_size": 8}]
    core = EngineCore(model, EngineConfig(max_num_seqs=4))
    params = SamplingParams(max_tokens=80)
    runs = [sequence(model, "d2f", p, params, tok, **o) for p, o in zip(ps, options, strict=False)]
    run_core(core, [s for s, _ in runs], join_after=4)
    for (_, out), p, o in zip(runs, ps, options, strict=False):
        assert out.tokens == alone(model, "d2f", p, params, **o)[0]


@pytest.mark.parametrize("method", ["d2f", "ar"])
def test_preempted_requests_recompute_and_stream_each_token_once(models: dict[str, Transformer],
                                                                 tok: TextTokenizer, method: str) -> None:
    """A pool of 320 tokens for 6 sequences of up to ~170: the newest are preempted, decode again
    from their prompt when readmitted, and their streams continue without repeating a token."""
    model = models[method]
    core = EngineCore(model, EngineConfig(max_num_seqs=6, kv_cache_tokens=320, max_num_batched_tokens=512))
    params = SamplingParams(max_tokens=112)
    runs = [sequence(model, method, p, params, tok) for p in prompts(tok)]
    run_core(core, [s for s, _ in runs], join_after=6)
    assert core.scheduler.preemptions > 0
    for (s, out), p in zip(runs, prompts(tok), strict=True):
        want, forwards = alone(model, method, p, params)
        assert out.tokens == want and s.stats.tokens == len(want)
        assert s.stats.forwards >= forwards and (s.preemptions > 0) == (s.stats.forwards > forwards)
        text = "".join(d.text for d in out.deltas)
        assert text == tok.decode(want)
    assert core.runner.kv.free_pages == core.runner.kv.usable_pages


def test_vanilla_runs_solo_in_the_same_engine(models: dict[str, Transformer], tok: TextTokenizer) -> None:
    model = load_model(TEACHER)
    core = EngineCore(model, EngineConfig(max_num_seqs=4))
    params = SamplingParams(max_tokens=24)
    runs = [sequence(model, "vanilla", p, params, tok) for p in prompts(tok)[:2]]
    runs.append(sequence(models["fast-dllm"], "fast-dllm", prompts(tok)[2], params, tok))
    run_core(core, [s for s, _ in runs], join_after=3)
    for (s, out), p in zip(runs[:2], prompts(tok)[:2], strict=True):
        want, forwards = alone(model, "vanilla", p, params)
        assert out.tokens == want and s.stats.forwards == forwards
    assert runs[2][1].tokens == alone(models["fast-dllm"], "fast-dllm", prompts(tok)[2], params)[0]


def test_adaptive_policy_goes_lean_under_load_and_back(models: dict[str, Transformer], tok: TextTokenizer) -> None:
    policy = AdaptivePolicy(enabled=True, busy_at=4, calm_at=2)
    assert [policy.lean(n, was) for n, was in ((3, False), (4, False), (3, True), (2, True), (3, False))] == [
        False, True, True, False, False]  # hysteresis: lean at 4, back at 2
    assert not EngineConfig().adaptive.enabled  # off by default: a request decodes as it does alone
    # Lean throughout (calm only when empty), with one block in flight: each request decodes exactly
    # as alone with the lean block and tau_add 1 (one block at a time).
    model = models["d2f"]
    lean = AdaptivePolicy(enabled=True, busy_at=4, calm_at=0, tau_add=0.9, max_active=1, block_size=16)
    core = EngineCore(model, EngineConfig(max_num_seqs=8, adaptive=lean))
    params = SamplingParams(max_tokens=96)
    runs = [sequence(model, "d2f", p, params, tok) for p in prompts(tok)]
    run_core(core, [s for s, _ in runs], join_after=6)
    assert all(s.lean for s, _ in runs)  # all admitted while lean
    for (_, out), p in zip(runs, prompts(tok), strict=True):
        assert out.tokens == alone(model, "d2f", p, params, block_size=16, tau_add=1.0)[0]


def test_kv_pool_accounting(models: dict[str, Transformer]) -> None:
    model = models["d2f"]
    cfg = EngineConfig(max_num_seqs=4, page_size=16)
    core = EngineCore(model, cfg)
    c = model.config
    assert core.kv_bytes_per_token == 2 * c.num_layers * c.num_kv_heads * c.head_dim * 4  # K and V, float32
    assert core.runner.kv.usable_pages * 16 == 4 * c.max_position_embeddings
    with pytest.raises(ValueError, match="kv_cache_tokens"):
        EngineConfig(kv_cache_tokens=8, page_size=16)
    with pytest.raises(ValueError, match="max_num_seqs"):
        EngineConfig(max_num_seqs=0)
    with pytest.raises(ValueError, match="calm_at"):
        AdaptivePolicy(busy_at=2, calm_at=2)


def test_deadline_and_too_small_pool_through_the_text_engine() -> None:
    eng = TextEngine(STUDENT, "d2f", config=EngineConfig(max_num_seqs=2, kv_cache_tokens=128))
    with pytest.raises(ValueError, match="exceeds the KV pool"):
        eng.prepare(TextRequest(QUESTIONS[0], SamplingParams(max_tokens=128)))
    slow = {"tau_conf": 1.0, "tau_act": 1.0, "block_size": 8}
    req = TextRequest(QUESTIONS[0], SamplingParams(max_tokens=80), request_id="late", decoder_options=slow,
                      timeout_s=0.05)
    t0 = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        list(eng.stream(req))
    st = eng.stats("late")
    assert st is not None and st.state == "cancelled" and time.monotonic() - t0 < 5 and st.forwards < 80
    ok = eng.generate([QUESTIONS[0]], SamplingParams(max_tokens=64))[0]
    assert ok.finish_reason == "stop" and ok.text.endswith("The answer is 22.")
    eng.close()


def test_slot_pool_keeps_sequences_in_their_slots() -> None:
    kv = SlotKVCache(1, num_slots=3, slot_pages=4, page_size=8, num_kv_heads=2, head_dim=4, dtype=torch.float32,
                     device="cpu")
    a, b = kv.allocate(2), kv.allocate(1)
    assert (kv.slot_of(a), kv.slot_of(b)) == (0, 1) and a == [1, 2] and b == [5]
    a += kv.allocate(2, a)  # grows inside its own slot
    assert a == [1, 2, 3, 4] and kv.free_pages == 12 - 5
    with pytest.raises(ValueError, match="more than its slot"):
        kv.allocate(1, a)
    kv.release(a)
    assert kv.slot_of(kv.allocate(1)) == 0  # the lowest free slot again: running sequences stay packed
    kv.allocate(1)
    with pytest.raises(ValueError, match="every slot is held"):
        kv.allocate(1)
    # Each token's heads land in its slot's rows at its position: slot 1, position 3, heads 0 and 1.
    assert kv.slot_rows(np.array([1]), np.array([3])).tolist() == [1 * 2 * 32 + 0 * 32 + 3, 1 * 2 * 32 + 1 * 32 + 3]
    with pytest.raises(ValueError, match="kv_layout slots needs"):
        EngineConfig(max_num_seqs=4, kv_cache_tokens=64, kv_layout="slots").slot_pages(4096, "cpu")
    assert EngineConfig(max_num_seqs=4).slot_pages(256, "cuda") == 0  # paged on a GPU unless asked


def test_whole_blocks_in_the_batched_engine_equals_the_decoder_alone(models: dict[str, Transformer],
                                                                     tok: TextTokenizer) -> None:
    model = models["d2f"]
    params = SamplingParams(max_tokens=40)  # 2 whole blocks of 16 and a short one of 8 by default
    core = EngineCore(model, EngineConfig(max_num_seqs=4))
    runs = [sequence(model, "d2f", p, params, tok, block_size=16, whole_blocks=True) for p in prompts(tok)]
    run_core(core, [s for s, _ in runs], join_after=1)
    for (_, out), p in zip(runs, prompts(tok), strict=True):
        assert out.error is None and len(out.tokens) <= 32
        assert out.tokens == alone(model, "d2f", p, params, block_size=16, whole_blocks=True)[0]
