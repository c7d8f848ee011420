"""The engine API on the embedded checkpoints: loading, generation, streaming, async cancellation."""

from __future__ import annotations

import asyncio
import re

import pytest

from lab.bench.text import AR, STUDENT, TEACHER
from lab.worlds import arith
from models.engine import TextEngine
from models.sampling import SamplingParams

PARAMS = SamplingParams(max_tokens=128)


@pytest.fixture(scope="module")
def d2f() -> TextEngine:
    return TextEngine(STUDENT, "d2f")


def well_formed(p: arith.Problem, text: str) -> bool:
    """A step-by-step answer in the world's format whose first sentence ("<Name> starts with N
    <items>.") copies the question's name, number and item exactly, then "so a + b = c." steps,
    then "The answer is N.". Whether the sums are right is the benchmark's score."""
    first = p.answer.strip().split(".")[0]
    return (text.strip().split(".")[0] == first and re.search(r"so \d+ [+-] \d+ = \d+\.", text) is not None
            and arith.extract_answer(text) is not None)


def test_embedded_d2f_model_answers_heldout_problems_in_parallel(d2f: TextEngine) -> None:
    probs = arith.problems("heldout", 8, seed=9)
    outs = d2f.generate([p.question for p in probs], PARAMS)
    assert all(well_formed(p, c.text) for p, c in zip(probs, outs, strict=True)), [c.text for c in outs]
    assert all(c.finish_reason == "stop" for c in outs)
    assert sum(len(c.token_ids) for c in outs) / sum(c.forwards for c in outs) > 2.0


@pytest.mark.parametrize("path,method", [(TEACHER, "vanilla"), (TEACHER, "fast-dllm"), (AR, "ar")])
def test_baselines_load_through_the_same_loader_and_solve(path, method) -> None:
    eng = TextEngine(path, method)
    p = arith.problems("heldout", 1, seed=4)[0]
    c = eng.generate([p.question], PARAMS)[0]
    assert well_formed(p, c.text), c.text


def test_stream_concatenates_to_generate(d2f: TextEngine) -> None:
    q = arith.problems("heldout", 1, seed=5)[0].question
    deltas = list(d2f.stream(q, PARAMS))
    assert len([d for d in deltas if d.text]) > 1
    assert "".join(d.text for d in deltas) == d2f.generate([q], PARAMS)[0].text
    assert deltas[-1].finished


def test_prompt_too_long_is_rejected(d2f: TextEngine) -> None:
    with pytest.raises(ValueError, match="exceeds"):
        list(d2f.stream("word " * 600, PARAMS))


def test_async_stream_and_cancellation(d2f: TextEngine) -> None:
    q = arith.problems("heldout", 1, seed=6)[0].question

    async def first_then_cancel() -> tuple[str, str]:
        got = []
        async for d in d2f.astream(q, PARAMS):
            got.append(d.text)
            break  # closing the async generator cancels decoding
        full = "".join([d.text async for d in d2f.astream(q, PARAMS)])
        return got[0], full

    first, full = asyncio.run(first_then_cancel())
    assert first and full.startswith(first)


def test_cli_streams_answer_and_reports_speed() -> None:
    import subprocess
    import sys

    p = arith.problems("heldout", 1, seed=7)[0]
    out = subprocess.run([sys.executable, "-m", "models.d2f", "--model", str(STUDENT), p.question],
                         capture_output=True, text=True, timeout=120, check=True)
    assert well_formed(p, out.stdout.strip("\n").rstrip()), out.stdout
    assert "tokens/forward" in out.stderr and "tokens/s" in out.stderr
