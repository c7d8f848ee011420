"""StreamDetokenizer on the project's tokenizer: deltas add up to a full decode, multi-byte characters
included, and each chunk decodes a window that does not grow with the text."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from tokenizers.decoders import DecodeStream

from models.tokenizer import StreamDetokenizer, TextTokenizer

TOKENIZER_DIR = Path(__file__).resolve().parents[1] / "checkpoints" / "arith-d2f-lora"
TEXT = "Alice has 3 apples – she buys 4 more, so 3 + 4 = 7. Café naïve, 日本語 🙂!\n"


@pytest.fixture(scope="module")
def tok() -> TextTokenizer:
    return TextTokenizer(TOKENIZER_DIR)


def chunks(ids: list[int], seed: int, most: int = 4) -> list[list[int]]:
    rng, out, i = random.Random(seed), [], 0
    while i < len(ids):
        n = rng.randint(1, most)
        out.append(ids[i:i + n])
        i += n
    return out


def stream(tok: TextTokenizer, parts: list[list[int]]) -> list[str]:
    detok = StreamDetokenizer(tok)
    return [detok.push(p) for p in parts] + [detok.flush()]


@pytest.mark.parametrize("seed", range(5))
def test_deltas_add_up_to_the_full_decode(tok: TextTokenizer, seed: int) -> None:
    ids = tok.encode(TEXT * 3)
    assert all(len(tok.encode(c)) > 1 for c in "–é日🙂")  # multi-byte characters span several tokens
    assert "".join(stream(tok, chunks(ids, seed))) == tok.decode(ids) == TEXT * 3


def test_a_split_character_is_held_back_then_sent_whole(tok: TextTokenizer) -> None:
    ids = tok.encode("ab 日")
    assert len(tok.encode("日")) == 3  # one character, three byte tokens
    detok = StreamDetokenizer(tok)
    assert detok.push(ids[:-3]) == "ab "
    assert detok.push(ids[-3:-2]) == detok.push(ids[-2:-1]) == ""  # held back: no U+FFFD in mid-stream
    assert detok.push(ids[-1:]) == "日"


@pytest.mark.parametrize("seed", range(20))
def test_random_ids_and_a_cut_tail_match_the_full_decode(tok: TextTokenizer, seed: int) -> None:
    """Any ids (special tokens, lone byte tokens, a stream cut mid-character): flush releases the tail as
    the full decode renders it, which tokenizers' DecodeStream never does; before that both agree."""
    rng = random.Random(seed)
    ids = [rng.randrange(tok.tok.get_vocab_size()) for _ in range(60)]
    parts = chunks(ids, seed)
    deltas = stream(tok, parts)
    assert "".join(deltas) == tok.decode(ids)
    ds = DecodeStream(skip_special_tokens=True)
    theirs = "".join(t for p in parts if (t := ds.step(tok.tok, p)) is not None)
    assert "".join(deltas[:-1]) == theirs


def test_work_per_chunk_does_not_grow_with_the_text(tok: TextTokenizer) -> None:
    calls: list[int] = []
    decode = tok.decode

    def counting(ids: list[int]) -> str:
        calls.append(len(ids))
        return decode(ids)

    counting_tok = TextTokenizer(TOKENIZER_DIR)
    counting_tok.decode = counting  # type: ignore[method-assign]
    ids = tok.encode(TEXT * 200)
    parts = chunks(ids, 0, most=3)
    assert "".join(stream(counting_tok, parts)) == tok.decode(ids)
    assert len(ids) > 5000 and len(calls) <= 2 * len(parts) + 1
    # A window is the last chunk sent plus what is held back, which is at most a run of multi-byte
    # characters ("日本語 🙂": 14 tokens) and a chunk: bounded however long the text (a full re-decode
    # would pass thousands of ids by the end).
    assert max(calls) <= 2 * (14 + 3)
    assert sum(calls) <= 8 * len(ids)
