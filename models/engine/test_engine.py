"""The text engine on a tiny random model: streams, cancellation, forward counting, seeds, resumption, stats."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest
import torch

from models.engine import DecodeCancelled, TextDelta, TextEngine, TextRequest, request_seed
from models.sampling import SamplingParams
from models.tokenizer import StreamDetokenizer

PROMPT = "What is 2+3?"
# tau_conf = tau_act = 1 commits one token per forward: a long, slow generation to cancel.
SLOW = {"block_size": 32, "tau_add": 0.1, "tau_act": 1.0, "tau_conf": 1.0}


@pytest.fixture(scope="module")
def engine(tiny_dir: Path) -> TextEngine:
    torch.set_num_threads(1)
    return TextEngine(tiny_dir, "d2f")


def text_of(deltas: list[TextDelta]) -> str:
    return "".join(d.text for d in deltas)


def test_stream_is_generate_and_the_full_decode_and_is_counted(engine: TextEngine) -> None:
    req = TextRequest(PROMPT, SamplingParams(max_tokens=96), request_id="count")
    deltas = list(engine.stream(req))
    ids = [t for d in deltas for t in d.token_ids]
    assert len(ids) == 96 and len([d for d in deltas if d.text]) > 2
    assert text_of(deltas) == engine.tokenizer.decode(ids) == engine.generate([PROMPT], req.params)[0].text
    assert deltas[-1].finished and deltas[-1].finish_reason == "length" and not any(d.finished for d in deltas[:-1])
    st = engine.stats("count")
    assert st is not None and (st.state, st.tokens, st.forwards, st.cancelled) == (
        "finished", 96, deltas[-1].forwards, False)


def test_cancel_by_id_stops_before_the_next_forward(engine: TextEngine) -> None:
    req = TextRequest(PROMPT, SamplingParams(max_tokens=600), request_id="cancel-sync", decoder_options=SLOW)
    it = engine.stream(req)
    next(it)
    st = engine.stats("cancel-sync")
    assert st is not None and engine.cancel("cancel-sync")
    at_cancel = st.forwards
    with pytest.raises(DecodeCancelled):
        list(it)
    assert (st.state, st.forwards, st.decoding) == ("cancelled", at_cancel, False)
    assert not engine.cancel("cancel-sync") and not engine.cancel("unknown")


def test_a_consumer_that_goes_away_stops_the_decode_thread(engine: TextEngine) -> None:
    async def go() -> tuple[int, int]:
        req = TextRequest(PROMPT, SamplingParams(max_tokens=600), request_id="gone", decoder_options=SLOW)

        async def consume() -> None:
            async for _ in engine.astream(req):
                await asyncio.sleep(0)  # read on, one step after another, until cancelled

        task = asyncio.create_task(consume())
        while (st := engine.stats("gone")) is None or st.forwards < 5:
            await asyncio.sleep(0.001)
        task.cancel()
        at_cancel = st.forwards
        with pytest.raises(asyncio.CancelledError):
            await task
        while st.decoding:
            await asyncio.sleep(0.001)
        return at_cancel, st.forwards

    at_cancel, stopped = asyncio.run(go())
    st = engine.stats("gone")
    assert st is not None and st.state == "cancelled" and st.cancelled
    assert stopped <= at_cancel + 2  # the forward in progress when it was cancelled, and that is all
    # Closing the async generator after one delta works the same way.
    first = asyncio.run(_first_delta(engine, TextRequest(PROMPT, SamplingParams(max_tokens=600),
                                                         request_id="closed", decoder_options=SLOW)))
    closed = engine.stats("closed")
    assert first.token_ids and closed is not None and closed.state == "cancelled" and closed.forwards < 600


async def _first_delta(engine: TextEngine, req: TextRequest) -> TextDelta:
    stream = engine.astream(req)
    d = await anext(stream)
    await stream.aclose()
    return d


@pytest.mark.parametrize("params", [SamplingParams(max_tokens=96), SamplingParams(0.8, 0.9, 96)],
                         ids=["greedy", "sampled"])
def test_skip_tokens_resumes_exactly(engine: TextEngine, params: SamplingParams) -> None:
    # No seed when sampling: the request id's seed makes the retry replay the first stream.
    full = list(engine.stream(TextRequest(PROMPT, params, request_id="resume")))
    text, ids = text_of(full), [t for d in full for t in d.token_ids]
    seen = list(itertools.accumulate(len(d.token_ids) for d in full))
    i = next(i for i in range(1, len(full)) if len(full[i].token_ids) >= 2)
    for skip in (seen[i - 1], seen[i - 1] + len(full[i].token_ids) // 2):  # a chunk's edge, and mid-chunk
        resumed = list(engine.stream(TextRequest(PROMPT, params, request_id="resume", skip_tokens=skip)))
        assert [t for d in resumed for t in d.token_ids] == ids[skip:]
        assert resumed[-1].finished and resumed[-1].forwards == full[-1].forwards
        # What a first attempt had sent after `skip` tokens (short of a character split there), then the rest.
        sent = StreamDetokenizer(engine.tokenizer).push(ids[:skip])
        assert text.startswith(sent) and sent + text_of(resumed) == text
        st = engine.stats("resume")
        assert st is not None and st.tokens == 96 - skip


def test_seeds_come_from_the_request_id_unless_given(engine: TextEngine) -> None:
    sampled = SamplingParams(temperature=1.0, max_tokens=24)

    def ids(req: TextRequest) -> list[int]:
        return [t for d in engine.stream(req) for t in d.token_ids]

    assert ids(TextRequest(PROMPT, sampled, request_id="a")) == ids(TextRequest(PROMPT, sampled, request_id="a"))
    assert ids(TextRequest(PROMPT, sampled, request_id="a")) != ids(TextRequest(PROMPT, sampled, request_id="b"))
    seeded = SamplingParams(temperature=1.0, max_tokens=24, seed=request_seed("a"))
    assert ids(TextRequest(PROMPT, seeded, request_id="other")) == ids(TextRequest(PROMPT, sampled, request_id="a"))
    assert TextRequest(PROMPT, SamplingParams(), request_id="a").seeded_params().seed is None  # greedy


def test_requests_are_validated_with_clear_messages(engine: TextEngine) -> None:
    with pytest.raises(ValueError, match=r"exceeds the model's 1024 positions"):
        engine.prepare(TextRequest("seven " * 1100))
    with pytest.raises(ValueError, match=r"skip_tokens \(200\) exceeds max_tokens \(128\)"):
        TextRequest(PROMPT, skip_tokens=200)
    with pytest.raises(ValueError, match="needs a seed or a request_id"):
        TextRequest(PROMPT, SamplingParams(temperature=0.5), skip_tokens=4)
    with pytest.raises(ValueError, match=r"tau_conf must be in \[0, 1\]"):
        engine.prepare(TextRequest(PROMPT, decoder_options={"tau_conf": 1.5}))
    assert engine.prepare(TextRequest(PROMPT)).decoder is engine.decoder  # defaults share the engine's decoder
    assert engine.prepare(TextRequest(PROMPT, decoder_options=SLOW)).decoder is not engine.decoder


def test_a_closed_engine_cancels_and_refuses(tiny_dir: Path) -> None:
    eng = TextEngine(tiny_dir, "d2f")
    it = eng.stream(TextRequest(PROMPT, SamplingParams(max_tokens=600), request_id="r", decoder_options=SLOW))
    next(it)
    eng.close()
    with pytest.raises(DecodeCancelled):
        next(it)

    async def go() -> None:
        async for _ in eng.astream(PROMPT, SamplingParams(max_tokens=8)):
            pass

    with pytest.raises(RuntimeError, match="closed"):
        asyncio.run(go())
