"""A seeded world of GSM8K-style word problems with step-by-step answers.

Each problem is a story of a person whose count of some item changes a few times; the answer
restates every change with its arithmetic ("She finds 7, so 12 + 7 = 19.") and ends with
"The answer is N." Answers run 40-120 tokens, so parallel decoding has room to matter, and most
of their words are copied from the question, which is what a well-trained diffusion LM can
commit many at a time. The running totals are the part that needs real computation.

Every step has the same shape and token count ("She buys 7, so 12 + 7 = 19." is 11 tokens:
single-token names, verbs and numbers), so step k of an answer always sits at the same offset
from the prompt. A tiny diffusion model decodes positions in any order; with variable-width
steps it loses track of which step a position belongs to and repeats or skips steps.

The split is by problem fingerprint: held-out problems never appear in training data.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass

NAMES_SHE = ("Mia", "Ava", "Lily", "Emma", "Zoe", "Nora", "Ruby", "Iris")
NAMES_HE = ("Tom", "Ben", "Leo", "Max", "Sam", "Noah", "Jack", "Owen")
ITEMS = ("apples", "marbles", "coins", "books", "stickers", "cards", "pens", "shells")
GAIN_VERBS = ("finds", "buys", "gets", "wins")
LOSS_VERBS = ("loses", "sells", "gives", "uses")

MAX_TOTAL = 40
MIN_STEPS, MAX_STEPS = 3, 8
PROMPT_TEMPLATE = "Question: {question}\nAnswer:"


@dataclass(frozen=True, slots=True)
class Problem:
    question: str
    answer: str  # the full step-by-step answer text, starting with a space
    result: int

    @property
    def prompt(self) -> str:
        return PROMPT_TEMPLATE.format(question=self.question)


def make_problem(rng: random.Random, n_steps: int | None = None) -> Problem:
    if rng.random() < 0.5:
        name, pron = rng.choice(NAMES_SHE), "She"
    else:
        name, pron = rng.choice(NAMES_HE), "He"
    item = rng.choice(ITEMS)
    steps = n_steps if n_steps is not None else rng.randint(MIN_STEPS, MAX_STEPS)
    total = rng.randint(2, 20)
    q = [f"{name} has {total} {item}."]
    a = [f" {name} starts with {total} {item}."]
    for _ in range(steps):
        gain = total < 10 or (total <= MAX_TOTAL - 9 and rng.random() < 0.5)
        if gain:
            x = rng.randint(1, min(9, MAX_TOTAL - total))
            verb = rng.choice(GAIN_VERBS)
            q.append(f"{pron} {verb} {x} more.")
            a.append(f"{pron} {verb} {x}, so {total} + {x} = {total + x}.")
            total += x
        else:
            x = rng.randint(1, min(9, total - 1))
            verb = rng.choice(LOSS_VERBS)
            q.append(f"{pron} {verb} {x}.")
            a.append(f"{pron} {verb} {x}, so {total} - {x} = {total - x}.")
            total -= x
    q.append(f"How many {item} does {name} have now?")
    a.append(f"The answer is {total}.")
    return Problem(question=" ".join(q), answer=" ".join(a), result=total)


def _is_heldout(p: Problem) -> bool:
    # 1 in 10 problems (by content hash) is reserved for evaluation, whatever seed produced it.
    return hashlib.sha256(p.question.encode()).digest()[0] < 26


def problems(split: str, n: int, seed: int = 0) -> list[Problem]:
    """`n` distinct problems of `split` ("train" or "heldout"), deterministic for a seed."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = random.Random(f"arith/{split}/{seed}")
    out: list[Problem] = []
    seen: set[str] = set()
    while len(out) < n:
        p = make_problem(rng)
        if _is_heldout(p) == (split == "heldout") and p.question not in seen:
            seen.add(p.question)
            out.append(p)
    return out


_ANSWER_RE = re.compile(r"The answer is (-?\d+)\.")


def extract_answer(text: str) -> int | None:
    m = _ANSWER_RE.search(text)
    return int(m.group(1)) if m else None


def score(problem: Problem, generated: str) -> float:
    """Exact-answer accuracy of one generation: 1.0 when its final answer equals the truth."""
    return 1.0 if extract_answer(generated) == problem.result else 0.0


def corpus_texts(n: int, seed: int = 0) -> list[str]:
    """Full prompt+answer strings, for training the tokenizer."""
    return [p.prompt + p.answer for p in problems("train", n, seed)]
