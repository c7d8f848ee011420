"""Structured logs: one JSON object per line, so a job can be followed across gateway, dispatcher and
worker by its ids (`job_id`, `request_id`, `call_id`) with any log pipeline (Loki, CloudWatch, jq).

`event(log, "job.submitted", job_id=..., request_id=...)` logs one event with its fields; ordinary
log calls come out as JSON lines too (`msg`, `level`, `logger`, `ts`), and an exception's traceback
stays in the log line (`exc`), never in anything a client sees.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

_FIELDS = "_tessera_fields"
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {"ts": round(record.created, 3), "level": record.levelname.lower(),
                               "logger": record.name, "msg": record.getMessage()}
        out.update(getattr(record, _FIELDS, {}))
        for k, v in vars(record).items():  # `extra=` fields
            if k not in _STANDARD and k != _FIELDS:
                out[k] = v
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str, ensure_ascii=False)


def setup(fmt: str = "json", level: int = logging.INFO) -> None:
    """Configure the root logger of a service process: "json" (one object per line) or "text"."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "text":
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        raise ValueError(f"log format must be 'json' or 'text', got {fmt!r}")
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.Formatter.converter = time.gmtime


def event(log: logging.Logger, name: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log one event (`name`, e.g. "job.succeeded") with its fields; empty fields are left out."""
    if log.isEnabledFor(level):
        log.log(level, name, extra={_FIELDS: {"event": name, **{k: v for k, v in fields.items()
                                                                  if v not in ("", None)}}})
