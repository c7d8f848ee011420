"""The one text engine: loading, the decode loop (sync and async streams), cancellation, forward
counting, per-request seeds, resumption and stats. Nothing here knows about RPCs or serving."""

from models.engine.request import (
    Completion,
    DecodeCancelled,
    Plan,
    RequestStats,
    TextDelta,
    TextRequest,
    request_seed,
)
from models.engine.text_engine import RECENT_REQUESTS, TextEngine, tokenizer_dir

__all__ = ["RECENT_REQUESTS", "Completion", "DecodeCancelled", "Plan", "RequestStats", "TextDelta", "TextEngine",
           "TextRequest", "request_seed", "tokenizer_dir"]
