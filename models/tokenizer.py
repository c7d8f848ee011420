"""Tokenizer loading (tokenizer.json via the tokenizers library) and incremental streaming detokenization."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from tokenizers import Tokenizer

from models.prompting import PromptFormat, load_tokenizer_config


class TextCodec(Protocol):
    """Text <-> ids without special tokens: what the engines and the streaming detokenizer use of a
    tokenizer (`TextTokenizer`, or the lab's in-memory one)."""

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...


class TextTokenizer:
    def __init__(self, model_dir: str | Path) -> None:
        d = Path(model_dir)
        self.tok = Tokenizer.from_file(str(d / "tokenizer.json"))
        cfg = load_tokenizer_config(d)
        self.prompt_format = PromptFormat.from_config(cfg)  # chat template, BOS, prompt_template
        self.model_max_length: int | None = cfg.get("model_max_length")

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=True)

    def encode_prompt(self, prompt: str, mode: str = "auto") -> list[int]:
        """A user prompt's ids in the model's prompt format (models.prompting: chat template, BOS, the tiny
        models' prompt_template; "raw" = the text alone). Raises ValueError for a mode the checkpoint lacks."""
        text, bos = self.prompt_format.render(prompt, mode)
        ids = self.encode(text)
        if bos:
            bos_token = self.prompt_format.bos_token
            bos_id = self.token_id(bos_token) if bos_token is not None else None
            if bos_id is None:
                raise ValueError(f"bos_token {bos_token!r} is not in the tokenizer's vocabulary")
            if ids[:1] != [bos_id]:  # once: a template that writes bos_token already has it
                ids.insert(0, bos_id)
        return ids

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
