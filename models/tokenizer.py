"""Tokenizer loading (tokenizer.json via the tokenizers library) and incremental streaming detokenization."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer


class TextCodec(Protocol):
    """Text <-> ids without special tokens: what the engines and the streaming detokenizer use of a
    tokenizer (`TextTokenizer`, or the lab's in-memory one)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


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
    """Turns a stream of token ids into text deltas without re-decoding the whole text each time.

    The method of tokenizers' DecodeStream: decode only a window, the ids of the last emitted chunk
    (context for decoders whose output depends on what precedes, e.g. prefix spaces) plus the ids
    not emitted yet, and hold back a delta that ends in U+FFFD (a multi-byte character split across
    tokens). Unlike DecodeStream it can `flush` an incomplete tail at the end of a stream, so the
    deltas always add up to `tok.decode(all_ids)` (DecodeStream never releases that tail).
    """

    def __init__(self, tok: TextCodec) -> None:
        self.tok = tok
        self.window: list[int] = []  # window[:read] is the context, window[read:] the ids not yet emitted
        self.read = 0
        self.context_text = ""  # decode(window[:read])

    def push(self, ids: list[int]) -> str:
        """The new text once `ids` follow the ids pushed before ("" while a character is incomplete)."""
        self.window.extend(ids)
        text = self.tok.decode(self.window)
        if len(text) <= len(self.context_text) or text.endswith("\ufffd"):
            return ""  # nothing new (e.g. a skipped special token), or a character still split
        return self._emit(text)

    def flush(self) -> str:
        """Whatever was held back, rendered as a full decode renders it (U+FFFD for a cut character)."""
        if self.read == len(self.window):
            return ""
        text = self.tok.decode(self.window)
        return self._emit(text) if len(text) > len(self.context_text) else ""

    def _emit(self, text: str) -> str:
        delta = text[len(self.context_text):]
        self.window = self.window[self.read:]  # the emitted chunk becomes the next push's context
        self.read = len(self.window)
        self.context_text = self.tok.decode(self.window)
        return delta
