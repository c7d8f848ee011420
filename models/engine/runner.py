"""The model runner: the model, its paged KV pool, and one batched forward per engine step."""

from __future__ import annotations

import torch

from models.engine.batch import build_batch
from models.engine.config import EngineConfig
from models.engine.methods import Window
from models.transformer import Transformer


class ModelRunner:
    def __init__(self, model: Transformer, cfg: EngineConfig) -> None:
        self.model, self.cfg = model, cfg
        self.max_positions = model.config.max_position_embeddings
        pages = cfg.num_pages(self.max_positions)
        self.kv = model.new_paged_cache(pages, cfg.page_size)
        self.device = model.embed.weight.device

    @torch.inference_mode()
    def run(self, windows: list[Window], tables: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
        """Logits of every window's logit rows, concatenated in batch order, and each one's row count."""
        inp = build_batch(windows, tables, self.cfg.page_size, self.max_positions, self.device,
                          self.model.embed.weight.dtype, padded=self.cfg.layout == "padded")
        logits = self.model.forward_packed(inp.input_ids, inp.batch, self.kv, inp.rows)
        return logits, inp.row_counts
