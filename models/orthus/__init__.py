"""Orthus (Kou et al., ICML 2025): a clean-room plain-PyTorch implementation for serving.

See /work/shared/reference/image-models.md §1 for the facts it is built from.
"""

from __future__ import annotations

from models.orthus.checkpoint import load_orthus, save_orthus
from models.orthus.config import OrthusConfig
from models.orthus.head import CFG, DiffusionHead, Pix2PixCFG, make_scheduler
from models.orthus.model import Orthus
from models.orthus.prompt import Prompt, build_prompt, edit_rows

__all__ = ["CFG", "DiffusionHead", "Orthus", "OrthusConfig", "Pix2PixCFG", "Prompt", "build_prompt", "edit_rows",
           "load_orthus", "make_scheduler", "save_orthus"]
