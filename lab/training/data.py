"""Tokenized training batches from the arith world."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer

from lab.worlds import arith
from lab.worlds.tokenizer import EOS_TOKEN, MASK_TOKEN, train_bpe

GEN_LEN = 128  # generation budget the models are trained for; answers are at most ~115 tokens
SEQ_LEN = 192  # longest prompt (~63 tokens) + GEN_LEN, rounded up


def build_tokenizer(out_dir: Path) -> Tokenizer:
    tok = train_bpe(arith.corpus_texts(20000, seed=1234), vocab_size=512)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok.save(str(out_dir / "tokenizer.json"))
    (out_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN,
        "mask_token": MASK_TOKEN, "model_max_length": SEQ_LEN,
        # The prompt format the tiny models were trained on; real checkpoints use chat templates.
        "prompt_template": arith.PROMPT_TEMPLATE.replace("{question}", "{prompt}"),
    }, indent=2) + "\n")
    return tok


@dataclass(slots=True)
class Batch:
    ids: torch.Tensor  # [B, SEQ_LEN] prompt + answer + EOS padding
    prompt_len: torch.Tensor  # [B]
    answer_len: torch.Tensor  # [B] answer tokens, not counting EOS
    valid_len: torch.Tensor  # [B] prompt + generation canvas; positions past it are padding

    def to(self, device: torch.device | str) -> Batch:
        return Batch(self.ids.to(device), self.prompt_len.to(device), self.answer_len.to(device),
                     self.valid_len.to(device))

    def key_mask(self) -> torch.Tensor:
        """[B, 1, 1, L] True where a key is inside its sample's canvas."""
        pos = torch.arange(self.ids.shape[1], device=self.ids.device)
        return (pos[None, :] < self.valid_len[:, None])[:, None, None, :]


class ProblemStream:
    """Endless batches of training problems (fresh problems each epoch of the pool)."""

    def __init__(self, tok: Tokenizer, batch_size: int, seed: int, pool: int = 20000) -> None:
        self.tok, self.batch_size, self.seed, self.pool = tok, batch_size, seed, pool
        self.eos = tok.token_to_id(EOS_TOKEN)
        self.gen = torch.Generator().manual_seed(seed)
        self.epoch = 0
        self._load()

    def _load(self) -> None:
        probs = arith.problems("train", self.pool, seed=self.seed * 1000 + self.epoch)
        prompts = self.tok.encode_batch([p.prompt for p in probs])
        answers = self.tok.encode_batch([p.answer for p in probs])
        n = len(probs)
        self.ids = torch.full((n, SEQ_LEN), self.eos, dtype=torch.long)
        self.plen = torch.empty(n, dtype=torch.long)
        self.alen = torch.empty(n, dtype=torch.long)
        for i, (p, a) in enumerate(zip(prompts, answers, strict=True)):
            seq = p.ids + a.ids
            if len(seq) >= SEQ_LEN or len(a.ids) >= GEN_LEN:
                raise ValueError(f"problem too long for SEQ_LEN={SEQ_LEN}: {len(seq)} tokens")
            self.ids[i, : len(seq)] = torch.tensor(seq)
            self.plen[i], self.alen[i] = len(p.ids), len(a.ids)
        self.order = torch.randperm(n, generator=self.gen)
        self.cursor = 0

    def next(self) -> Batch:
        if self.cursor + self.batch_size > len(self.order):
            self.epoch += 1
            self._load()
        idx = self.order[self.cursor : self.cursor + self.batch_size]
        self.cursor += self.batch_size
        # Random canvas lengths: users choose max_tokens, so the model must not learn where the
        # sequence ends (a fixed canvas made the teacher fail on any other generation length).
        plen, alen = self.plen[idx], self.alen[idx]
        lo = alen + 1
        hi = torch.clamp(SEQ_LEN - plen, min=lo)
        gen = lo + (torch.rand(len(idx), generator=self.gen) * (hi - lo + 1).float()).long()
        return Batch(self.ids[idx], plen, alen, plen + torch.minimum(gen, hi))
