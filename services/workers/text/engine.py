"""The text worker's engine: GenerateTextRequest -> models.engine.TextEngine -> GenerateTextResponse.

Decoding, batching, cancellation, forward counting, seeds, resumption and stats all live in
models.engine: one continuously batched engine per replica, stepped by its one background loop,
every call an asyncio queue of deltas (TextEngine.astream). This maps the wire onto its requests
and its deltas back, and runs the replica's lifecycle.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import asdict
from typing import Any

import torch

from models.engine import Plan, TextEngine, TextRequest
from models.sampling import SamplingParams
from services.workers.protocol import InvalidRequestError
from services.workers.runtime import check_model_name, prepare_replica
from services.workers.text.config import D2F_KNOBS, TextModelConfig
from tessera.worker.v1.worker_pb2 import (
    CountTokensRequest,
    CountTokensResponse,
    DescribeTextRequest,
    DescribeTextResponse,
    GenerateTextRequest,
    GenerateTextResponse,
    TextModelInfo,
)


class LocalTextEngine:
    """The text worker engine over an in-process models.engine.TextEngine."""

    def __init__(self, cfg: TextModelConfig, max_concurrency: int = 4) -> None:
        """max_concurrency: the calls Serve routes here at once, all decoded in one batch."""
        self.cfg = cfg
        self.max_concurrency = max_concurrency
        self.engine: TextEngine | None = None
        self._defaults = cfg.decoder.options_for(cfg.method)
        self._description: DescribeTextResponse | None = None  # built once (the overhead is measured)

    async def start(self) -> None:
        prepare_replica(self.cfg)
        self.engine = await asyncio.to_thread(
            TextEngine, self.cfg.path, self.cfg.method, self._defaults, dtype=getattr(torch, self.cfg.dtype),
            device=self.cfg.device, config=self.cfg.batching.engine_config(self.max_concurrency),
            prompt_format=self.cfg.prompt_format, base_dir=self.cfg.base_path)

    @property
    def max_positions(self) -> int:
        assert self.engine is not None, "start() first"
        return self.engine.max_positions

    def describe(self, request: DescribeTextRequest | None = None) -> DescribeTextResponse:
        """The model and its limits, with the prompt format's overhead (the gateway's first check of a
        prompt's length; CountTokens is the exact one)."""
        assert self.engine is not None, "start() first"
        if self._description is None:
            tok = self.engine.tokenizer
            # Positions the prompt format adds (template, chat template, BOS; 0 when "raw"): a one-word
            # prompt formatted minus the word alone.
            overhead = max(0, len(self.engine.encode_prompt("x")) - len(tok.encode("x")))
            self._description = DescribeTextResponse(models=[TextModelInfo(
                name=self.cfg.name, method=self.cfg.method, max_positions=self.max_positions,
                default_max_tokens=self.cfg.default_max_tokens,
                max_tokens_limit=min(self.cfg.max_tokens_limit, self.max_positions - 1),
                prompt_overhead_tokens=overhead)])
        return self._description

    def count_tokens(self, request: CountTokensRequest) -> CountTokensResponse:
        """Positions the prompt takes once formatted (as is when raw_prompt), as GenerateText counts them."""
        assert self.engine is not None, "start() first"
        check_model_name(request.model, self.cfg)
        try:  # the engine's own encoding, raw (no template, no BOS) or formatted, as GenerateText uses it
            return CountTokensResponse(prompt_tokens=len(self.engine.encode_prompt(request.prompt, request.raw_prompt)))
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e

    async def check_health(self) -> None:
        if self.engine is None:
            raise RuntimeError("text engine is not started")

    async def shutdown(self) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def job_stats(self, job_id: str) -> dict[str, Any] | None:
        stats = self.engine.stats(job_id) if self.engine is not None else None
        if stats is None:
            return None
        out = asdict(stats)
        out["job_id"] = out.pop("request_id")
        return out

    def plan(self, req: GenerateTextRequest) -> Plan:
        """Validate a request and resolve its defaults; raises InvalidRequestError."""
        assert self.engine is not None, "start() first"
        cfg = self.cfg
        check_model_name(req.model, cfg)
        if not req.prompt.strip():
            raise InvalidRequestError("prompt is empty")
        if req.max_tokens < 0 or req.max_tokens > cfg.max_tokens_limit:
            raise InvalidRequestError(f"max_tokens must be in [1, {cfg.max_tokens_limit}] (0 = default "
                                      f"{cfg.default_max_tokens}), got {req.max_tokens}")
        seed = req.seed if req.HasField("seed") else None
        # The engine seeds a sampled request from its id; said here in the wire's names.
        if req.skip_tokens > 0 and req.temperature > 0 and seed is None and not req.job_id:
            raise InvalidRequestError("skip_tokens with temperature > 0 needs a seed or a job_id "
                                      "(the resumed stream must repeat the first one)")
        overrides: dict[str, Any] = {"block_size": req.block_size} if req.block_size else {}
        for knob in D2F_KNOBS:
            if req.HasField(knob):
                # float32 on the wire: 0.9 arrives as 0.89999998, which must still mean "the default".
                overrides[knob] = round(getattr(req, knob), 6)
        try:
            # float32 on the wire: rounded like the knobs above (0.01 must not arrive as 0.0099999998),
            # but never to 0, which would turn a degenerate 1e-38 into greedy instead of refusing it.
            params = SamplingParams(temperature=round(req.temperature, 6) or req.temperature, top_p=req.top_p or 1.0,
                                    max_tokens=req.max_tokens or cfg.default_max_tokens, seed=seed)
            options = cfg.decoder.options_for(cfg.method, overrides)
            return self.engine.prepare(TextRequest(req.prompt, params, request_id=req.job_id,
                                                   decoder_options=options, skip_tokens=req.skip_tokens,
                                                   raw_prompt=req.raw_prompt))
        except ValueError as e:
            raise InvalidRequestError(str(e)) from e

    async def generate(self, request: GenerateTextRequest) -> AsyncIterator[GenerateTextResponse]:
        plan = self.plan(request)
        assert self.engine is not None
        # aclosing: a caller that stops reading stops the decode now, not when the stream is collected.
        async with aclosing(self.engine.astream(plan)) as deltas:
            async for d in deltas:
                msg = GenerateTextResponse(text=d.text, token_count=len(d.token_ids), forward_passes=d.forwards)
                if d.finished:
                    msg.finished, msg.finish_reason = True, d.finish_reason or "length"
                    msg.prompt_tokens, msg.model = len(plan.prompt_ids), self.cfg.name
                yield msg
