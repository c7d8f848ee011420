"""The text engine: loads a model, then decodes requests, vLLM-like (`generate(prompts, SamplingParams)`)
or streamed (`stream`, and `astream` for an event loop), with cancellation, deadlines, forward
counting, per-request seeds, resumption and stats.

Every request, whichever call made it, joins one continuously batched engine (models.engine.core)
stepped by one background loop (models.engine.driver): concurrent requests share each forward.
"""

from __future__ import annotations

import random
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from models.checkpoint import load_model
from models.decoders import D2FDecoder, make_decoder
from models.engine.config import EngineConfig
from models.engine.core import EngineCore
from models.engine.driver import EngineLoop, apull, async_sink, pull, thread_sink
from models.engine.output import OutputWriter
from models.engine.request import Completion, Plan, RequestStats, TextDelta, TextRequest
from models.engine.sequence import Sequence, Sink
from models.resolve import resolve_base
from models.sampling import SamplingParams
from models.tokenizer import TextTokenizer

RECENT_REQUESTS = 1024  # stats kept of finished requests with an id, for inspection (tests, debugging)


def tokenizer_dir(model_dir: Path, base_dir: str | Path | None = None) -> Path:
    """Where a model's tokenizer lives: its own dir, else its adapter's base model dir (`base_dir`, or
    found from base_model_name_or_path as load_model finds it)."""
    if (model_dir / "tokenizer.json").exists():
        return model_dir
    if (model_dir / "adapter_config.json").exists():
        return resolve_base(model_dir, base_dir)
    raise FileNotFoundError(f"{model_dir}: no tokenizer.json")


class TextEngine:
    def __init__(self, model_dir: str | Path, method: str = "d2f", decoder_options: dict[str, Any] | None = None,
                 dtype: torch.dtype = torch.float32, device: str = "cpu", template: bool = True,
                 max_concurrency: int = 16, config: EngineConfig | None = None,
                 prompt_format: str = "auto", base_dir: str | Path | None = None) -> None:
        """max_concurrency: sequences decoded together (EngineConfig.max_num_seqs), unless `config` is given.
        prompt_format: how prompts are formatted (models.prompting: "auto", "chat", "template", "raw");
        template=False is the older spelling of prompt_format="raw".
        base_dir: the base model of an adapter `model_dir` (default: found from its adapter_config.json)."""
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        self.model_dir = Path(model_dir)
        self.tokenizer = TextTokenizer(tokenizer_dir(self.model_dir, base_dir))
        self.prompt_format = prompt_format if template else "raw"
        self.tokenizer.encode_prompt("x", self.prompt_format)  # a mode the checkpoint lacks fails before the load
        self.model = load_model(self.model_dir, dtype=dtype, device=device, base_dir=base_dir)
        self.method = method
        self.decoder_options = dict(decoder_options or {})
        # The single-sequence decoder: the request's config (thresholds) for the batched engine, and
        # the reference the batched engine is tested against (vanilla runs it as is, batch-1).
        self.decoder = make_decoder(self.model, method, **self.decoder_options)
        self.config = config or EngineConfig(max_num_seqs=max_concurrency)
        self.core = EngineCore(self.model, self.config)
        self.loop = EngineLoop(self.core)
        # Closed when the engine is collected or the interpreter exits: the loop's thread must not be
        # inside a forward while Python finalizes (a daemon thread killed in C++ code aborts the process).
        weakref.finalize(self, self.loop.close)
        self.requests: OrderedDict[str, RequestStats] = OrderedDict()

    @property
    def max_positions(self) -> int:
        return self.model.config.max_position_embeddings

    @property
    def kv_bytes_per_token(self) -> int:
        """KV pool bytes one token of one sequence holds (a sequence holds whole pages of them)."""
        return self.core.kv_bytes_per_token

    def encode_prompt(self, prompt: str, raw: bool = False) -> list[int]:
        """The prompt's ids in the engine's prompt format; raw: the text alone (no template, no BOS)."""
        ids = self.tokenizer.encode_prompt(prompt, "raw" if raw else self.prompt_format)
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
        # A request's own decoder config (its thresholds), never a mutated shared one.
        decoder = (self.decoder if opts is None or opts == self.decoder_options
                   else make_decoder(self.model, self.method, **opts))
        ids = self.encode_prompt(request.prompt, raw=request.raw_prompt)
        max_tokens = request.params.max_tokens
        if isinstance(decoder, D2FDecoder):
            decoder.cfg.gen_tokens(max_tokens)  # whole_blocks: refuse a request under one block here
        if len(ids) + max_tokens > self.max_positions:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds "
                             f"the model's {self.max_positions} positions")
        kv = self.core.runner.kv
        if kv.pages_for(len(ids) + max_tokens) > kv.max_seq_pages:
            raise ValueError(f"prompt ({len(ids)} tokens) + max_tokens ({max_tokens}) exceeds the KV pool "
                             f"({kv.max_seq_pages * kv.page_size} tokens)")
        return Plan(request, ids, request.seeded_params(), decoder)

    def stream(self, request: Plan | TextRequest | str, params: SamplingParams | None = None) -> Iterator[TextDelta]:
        """Deltas of final text (the last has finished=True); validates at once, so a bad request
        raises before the first delta. Raises DecodeCancelled once cancelled. The request joins
        the engine when the first delta is asked for."""
        plan = request if isinstance(request, Plan) else self.prepare(request, params)
        return self._stream(plan)

    def _stream(self, plan: Plan) -> Iterator[TextDelta]:
        sink, q = thread_sink()
        stats = self._submit(plan, sink)
        try:
            yield from pull(q, stats)
        finally:
            self._abandon(stats)

    def generate(self, prompts: list[str], params: SamplingParams) -> list[Completion]:
        """Every prompt at once: they decode together, as concurrent requests do."""
        plans = [self.prepare(p, params) for p in prompts]
        runs = []
        for plan in plans:
            sink, q = thread_sink()
            runs.append((plan, self._submit(plan, sink), q))
        out = []
        for plan, stats, q in runs:
            c = Completion(prompt=plan.request.prompt, text="")
            try:
                for d in pull(q, stats):
                    c.text += d.text
                    c.token_ids += d.token_ids
                    c.forwards, c.finish_reason = d.forwards, d.finish_reason
            finally:
                self._abandon(stats)
            c.latency_s = stats.ended - stats.started
            out.append(c)
        return out

    async def astream(self, request: Plan | TextRequest | str,
                      params: SamplingParams | None = None) -> AsyncIterator[TextDelta]:
        """Stream without blocking the event loop. A consumer that stops reading (closes the
        generator, or its task is cancelled) cancels the request before the engine's next step."""
        plan = request if isinstance(request, Plan) else self.prepare(request, params)
        sink, q = async_sink()
        stats = self._submit(plan, sink)
        try:
            async for d in apull(q, stats):
                yield d
        finally:
            self._abandon(stats)

    def stats(self, request_id: str) -> RequestStats | None:
        return self.requests.get(request_id)

    def cancel(self, request_id: str) -> bool:
        """Stop a running request before the engine's next step (its stream raises DecodeCancelled)."""
        stats = self.requests.get(request_id)
        return stats is not None and self._cancel(stats)

    def close(self) -> None:
        """Cancel what runs and stop taking requests; the step in progress ends first."""
        self.loop.close()

    def _submit(self, plan: Plan, sink: Sink) -> RequestStats:
        req = plan.request
        params = plan.params
        if params.temperature > 0 and params.seed is None:
            # Fixed now, so a preempted request replays its own draws when it decodes again.
            plan = replace(plan, params=replace(params, seed=random.getrandbits(63)))
        stats = RequestStats(req.request_id, started=time.time())
        seq = Sequence(plan, stats, OutputWriter(self.tokenizer, req.skip_tokens, stats), sink,
                       deadline=time.monotonic() + req.timeout_s if req.timeout_s else None)
        self.loop.submit(seq)  # raises once closed, before the request is registered
        if req.request_id:  # a retry replaces the stats of the attempt before it
            self.requests.pop(req.request_id, None)
            self.requests[req.request_id] = stats
            while len(self.requests) > RECENT_REQUESTS:
                self.requests.popitem(last=False)
        return stats

    def _cancel(self, stats: RequestStats) -> bool:
        with self.core.lock:
            if stats.state != "running":
                return False
            stats.state, stats.cancelled = "cancelled", True
        self.loop.wake()
        return True

    def _abandon(self, stats: RequestStats) -> None:
        """The consumer is gone (or done): a request still running is cancelled."""
        self._cancel(stats)
