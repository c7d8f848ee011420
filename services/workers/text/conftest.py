"""A tiny random D2F model directory for the text worker tests (the trained model is tested elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lab.worlds import arith
from lab.worlds.tokenizer import train_bpe
from models.checkpoint import save_model
from models.config import ModelConfig
from models.transformer import Transformer

MAX_POSITIONS = 1024  # room for a long generation in the cancellation test
ASCII_VOCAB = 96  # the BPE's ids 2..95 are printable ASCII bytes: generated text is plain ASCII


def build_tiny_model(out: Path) -> Path:
    tok = train_bpe(arith.corpus_texts(300, seed=1), vocab_size=320)
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"prompt_template": "Question: {prompt}\nAnswer:"}))
    eos, mask = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|mdm_mask|>")
    torch.manual_seed(0)
    # Outputs limited to the first 96 ids (embedding_size covers the whole tokenizer for prompts).
    model = Transformer(ModelConfig(
        layout="llada", vocab_size=ASCII_VOCAB, embedding_size=tok.get_vocab_size(), hidden_size=32, num_layers=2,
        num_heads=4, num_kv_heads=4, intermediate_size=64, mask_token_id=mask, eos_token_id=eos,
        max_position_embeddings=MAX_POSITIONS))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:  # default init is so small that every position predicts one token
                torch.nn.init.normal_(p, std=0.3)
        # Zero logits for EOS and MASK lose to the max of ~94 random ones: runs always reach max_tokens.
        model.lm_head.weight[[eos, mask]] = 0.0
    save_model(model, out)
    return out


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-d2f"))
