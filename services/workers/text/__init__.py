"""The text worker: a D2F text engine as a Ray Serve deployment serving TextWorkerService."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from services.workers.text.server import start_text_worker

__all__ = ["start_text_worker"]


def __getattr__(name: str) -> Any:
    # Lazy: importing the package (e.g. for its config) must not import Ray.
    if name == "start_text_worker":
        from services.workers.text.server import start_text_worker

        return start_text_worker
    raise AttributeError(name)
