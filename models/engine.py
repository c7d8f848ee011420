"""A vLLM-like text engine: `generate(prompts, SamplingParams)` and an async streaming form."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import load_model
from models.decoders import FinishReason, make_decoder
from models.sampling import SamplingParams
from models.tokenizer import StreamDetokenizer, TextTokenizer


@dataclass(slots=True)
class TextDelta:
    text: str  # new final text
    token_ids: list[int]
    forwards: int
    finished: bool = False
    finish_reason: FinishReason | None = None


@dataclass(slots=True)
class Completion:
    prompt: str
    text: str
    token_ids: list[int] = field(default_factory=list)
    forwards: int = 0
    finish_reason: FinishReason | None = None
    latency_s: float = 0.0

    @property
    def tokens_per_forward(self) -> float:
        return len(self.token_ids) / self.forwards if self.forwards else 0.0


# Decoding steps run here so the event loop stays free; one thread per concurrent stream.
_STEPS = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="tessera-decode")


def tokenizer_dir(model_dir: Path) -> Path:
    """Where a model's tokenizer lives: its own dir, else its adapter's base model dir."""
    if (model_dir / "tokenizer.json").exists():
        return model_dir
    acfg = model_dir / "adapter_config.json"
    if acfg.exists():
        base = Path(json.loads(acfg.read_text())["base_model_name_or_path"])
        return base if base.is_absolute() else (model_dir / base).resolve()
    raise FileNotFoundError(f"{model_dir}: no tokenizer.json")


class TextEngine:
    def __init__(self, model_dir: str | Path, method: str = "d2f", decoder_options: dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.float32, device: str = "cpu", template: bool = True) -> None:
        self.model_dir = Path(model_dir)
        self.model = load_model(self.model_dir, dtype=dtype, device=device)
        self.tokenizer = TextTokenizer(tokenizer_dir(self.model_dir))
        self.method = method
        self.decoder = make_decoder(self.model, method, **(decoder_options or {}))
        self.template = template

    def encode_prompt(self, prompt: str) -> list[int]:
        text = self.tokenizer.format_prompt(prompt) if self.template else prompt
        ids = self.tokenizer.encode(text)
        if not ids:
            raise ValueError("prompt encodes to no tokens")
        return ids

    def stream(self, prompt: str, params: SamplingParams) -> Iterator[TextDelta]:
        ids = self.encode_prompt(prompt)
        limit = self.model.config.max_position_embeddings
        if len(ids) + params.max_tokens > limit:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({params.max_tokens}) exceeds "
                             f"the model's {limit} positions")
        detok = StreamDetokenizer(self.tokenizer)
        for ev in self.decoder.decode(ids, params):
            yield TextDelta(detok.push(ev.token_ids), ev.token_ids, ev.forwards, ev.finished, ev.finish_reason)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        out = []
        for prompt in prompts:
            t0 = time.perf_counter()
            c = Completion(prompt=prompt, text="")
            for d in self.stream(prompt, params):
                c.text += d.text
                c.token_ids += d.token_ids
                c.forwards, c.finish_reason = d.forwards, d.finish_reason
            c.latency_s = time.perf_counter() - t0
            out.append(c)
        return out

    async def astream(self, prompt: str, params: SamplingParams) -> AsyncIterator[TextDelta]:
        """Stream without blocking the event loop; cancelling the consumer stops decoding
        after the current forward pass."""
        it = self.stream(prompt, params)
        pending: concurrent.futures.Future[Any] | None = None
        sentinel = object()
        try:
            while True:
                # A concurrent future (not run_in_executor's asyncio wrapper): cancelling the
                # awaiting task must not mark the step as done while the thread still runs it.
                pending = _STEPS.submit(next, it, sentinel)
                d = await asyncio.wrap_future(pending)
                if d is sentinel:
                    return
                yield d
        finally:
            if pending is not None and not pending.done():
                pending.add_done_callback(lambda _: it.close())  # close once the running step ends
            else:
                it.close()
