"""The one text engine: loading, continuous batching (scheduler, paged KV pool, one batched forward
per step for every running request), the background loop, sync and async streams, cancellation and
deadlines, forward counting, per-request seeds, resumption and stats. Nothing here knows about RPCs
or serving."""

from models.engine.adaptive import AdaptivePolicy
from models.engine.config import EngineConfig
from models.engine.request import (
    Completion,
    DeadlineExceeded,
    DecodeCancelled,
    Plan,
    RequestStats,
    TextDelta,
    TextRequest,
    request_seed,
)
from models.engine.text_engine import RECENT_REQUESTS, TextEngine, tokenizer_dir

__all__ = ["RECENT_REQUESTS", "AdaptivePolicy", "Completion", "DeadlineExceeded", "DecodeCancelled", "EngineConfig",
           "Plan", "RequestStats", "TextDelta", "TextEngine", "TextRequest", "request_seed", "tokenizer_dir"]
