"""Tokenizer loading (tokenizer.json via the tokenizers library) and streaming detokenization."""

from __future__ import annotations

import json
from pathlib import Path

from tokenizers import Tokenizer


class TextTokenizer:
    def __init__(self, model_dir: str | Path) -> None:
        d = Path(model_dir)
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        cfg_path = d / "tokenizer_config.json"
        cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        self.prompt_template: str | None = cfg.get("prompt_template")
        self.model_max_length: int | None = cfg.get("model_max_length")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def format_prompt(self, prompt: str) -> str:
        """Wrap a user prompt in the model's template (tiny models); real ones get raw text."""
        return self.prompt_template.format(prompt=prompt) if self.prompt_template else prompt

    def token_id(self, token: str) -> int | None:
        return self.tok.token_to_id(token)


class StreamDetokenizer:
    """Turns a stream of token ids into text deltas, holding back incomplete UTF-8 sequences."""

    def __init__(self, tok: TextTokenizer) -> None:
        self.tok, self.ids, self.text = tok, [], ""

    def push(self, ids: list[int]) -> str:
        self.ids.extend(ids)
        text = self.tok.decode(self.ids)
        if text.endswith("\ufffd"):  # a multi-byte character split across tokens: wait for the rest
            return ""
        delta, self.text = text[len(self.text):], text
        return delta
