"""A tiny random D2F model directory with the project's tokenizer, for the engine's unit tests."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from models.checkpoint import save_model
from models.config import ModelConfig
from models.transformer import Transformer

TOKENIZER_DIR = Path(__file__).resolve().parents[2] / "checkpoints" / "arith-d2f-lora"
EOS, MASK, VOCAB = 0, 1, 454  # <|endoftext|>, <|mdm_mask|>, the tokenizer's size


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tiny-engine")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, out / name)
    torch.manual_seed(0)
    # Every id is a possible output, byte tokens included: generations hold split multi-byte characters.
    model = Transformer(ModelConfig(
        layout="llada", vocab_size=VOCAB, hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=4,
        intermediate_size=64, mask_token_id=MASK, eos_token_id=EOS, max_position_embeddings=1024))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" not in name:  # default init is so small that every position predicts one token
                torch.nn.init.normal_(p, std=0.3)
        model.lm_head.weight[[EOS, MASK]] = 0.0  # zero logits lose to the max of the rest: runs reach max_tokens
    save_model(model, out)
    return out
