"""The text engine: loads a model, then decodes requests, vLLM-like (`generate(prompts, SamplingParams)`)
or streamed (`stream`, and `astream` for an event loop), with cancellation, forward counting,
per-request seeds, resumption and stats."""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import load_model
from models.decoders import make_decoder
from models.engine.loop import install_hooks, run
from models.engine.request import Completion, Plan, RequestStats, TextDelta, TextRequest
from models.sampling import SamplingParams
from models.tokenizer import TextTokenizer

RECENT_REQUESTS = 1024  # stats kept of finished requests with an id, for inspection (tests, debugging)


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
                 dtype: torch.dtype = torch.float32, device: str = "cpu", template: bool = True,
                 max_concurrency: int = 4) -> None:
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.model_dir = Path(model_dir)
        self.model = load_model(self.model_dir, dtype=dtype, device=device)
        install_hooks(self.model)
        self.tokenizer = TextTokenizer(tokenizer_dir(self.model_dir))
        self.method = method
        self.decoder_options = dict(decoder_options or {})
        self.decoder = make_decoder(self.model, method, **self.decoder_options)
        self.template = template
        self.requests: OrderedDict[str, RequestStats] = OrderedDict()
        # astream's steps run here so the event loop stays free; one step at a time per stream, so
        # this bounds how many streams decode at once (threads start only when first needed).
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(max_concurrency, thread_name_prefix="text-decode")

    @property
    def max_positions(self) -> int:
        return self.model.config.max_position_embeddings

    def encode_prompt(self, prompt: str) -> list[int]:
        text = self.tokenizer.format_prompt(prompt) if self.template else prompt
        ids = self.tokenizer.encode(text)
        if not ids:
            raise ValueError("prompt encodes to no tokens")
        return ids

    def prepare(self, request: TextRequest | str, params: SamplingParams | None = None) -> Plan:
        """Validate a request (or a prompt and params); raises ValueError with a message for the caller."""
        if isinstance(request, str):
            request = TextRequest(request, params or SamplingParams())
        elif params is not None:
            raise TypeError("params go inside the TextRequest")
        opts = request.decoder_options
        # A per-request decoder, never a mutated shared one: other requests decode concurrently.
        decoder = (self.decoder if opts is None or opts == self.decoder_options
                   else make_decoder(self.model, self.method, **opts))
        ids = self.encode_prompt(request.prompt)
        max_tokens = request.params.max_tokens
        if len(ids) + max_tokens > self.max_positions:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds "
                             f"the model's {self.max_positions} positions")
        return Plan(request, ids, request.seeded_params(), decoder)

    def stream(self, request: Plan | TextRequest | str, params: SamplingParams | None = None) -> Iterator[TextDelta]:
        """Decode in the calling thread; validates at once, so a bad request raises before the first delta."""
        plan = request if isinstance(request, Plan) else self.prepare(request, params)
        return self._stream(plan)

    def _stream(self, plan: Plan) -> Iterator[TextDelta]:
        yield from run(plan, self._register(plan), self.tokenizer)

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

    async def astream(self, request: Plan | TextRequest | str,
                      params: SamplingParams | None = None) -> AsyncIterator[TextDelta]:
        """Stream without blocking the event loop. A consumer that stops reading (closes the
        generator, or its task is cancelled) cancels the decode before its next forward pass."""
        plan = request if isinstance(request, Plan) else self.prepare(request, params)
        if self._pool is None:
            raise RuntimeError("the text engine is closed")
        stats = self._register(plan)
        it = run(plan, stats, self.tokenizer)
        pending: Future[TextDelta | None] | None = None
        try:
            while True:
                # A concurrent future (not run_in_executor's asyncio wrapper): cancelling the
                # awaiting task must not mark the step as done while its thread still runs it.
                pending = self._pool.submit(next, it, None)
                d = await asyncio.wrap_future(pending)
                pending = None
                if d is None:
                    return
                yield d
        finally:
            _cancel(stats)
            _close_when_idle(it, pending)

    def stats(self, request_id: str) -> RequestStats | None:
        return self.requests.get(request_id)

    def cancel(self, request_id: str) -> bool:
        """Stop a running request before its next forward pass (its stream raises DecodeCancelled)."""
        stats = self.requests.get(request_id)
        if stats is None or stats.state != "running":
            return False
        stats.cancelled = True
        return True

    def close(self) -> None:
        """Cancel what runs and stop taking streams; decode threads end after their current forward."""
        for stats in self.requests.values():
            _cancel(stats)
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _register(self, plan: Plan) -> RequestStats:
        rid = plan.request.request_id
        stats = RequestStats(rid, started=time.time())
        if rid:  # a retry replaces the stats of the attempt before it
            self.requests.pop(rid, None)
            self.requests[rid] = stats
            while len(self.requests) > RECENT_REQUESTS:
                self.requests.popitem(last=False)
        return stats


def _cancel(stats: RequestStats) -> None:
    if stats.state == "running":
        stats.state, stats.cancelled = "cancelled", True


def _close_when_idle(it: Iterator[TextDelta], pending: Future[TextDelta | None] | None) -> None:
    # A step still running in its thread cannot be closed from here ("generator already executing");
    # the forward hook stops it at its next forward, and it is closed once that step ends.
    def close(f: Future[Any] | None = None) -> None:
        if f is not None and not f.cancelled():
            f.exception()  # consume the step's DecodeCancelled
        it.close()

    if pending is not None and not pending.done():
        pending.add_done_callback(close)
    else:
        close()
