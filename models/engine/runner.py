"""The model runner: the model, its paged KV pool, and one batched forward per engine step."""

from __future__ import annotations

import torch

from models.engine.batch import build_batch
from models.engine.config import EngineConfig
from models.engine.methods import Window
from models.kv_cache import PagedKVCache, SlotKVCache
from models.transformer import Transformer


class ModelRunner:
    def __init__(self, model: Transformer, cfg: EngineConfig) -> None:
        self.model, self.cfg = model, cfg
        self.max_positions = model.config.max_position_embeddings
        self.device = model.embed.weight.device
        slot = cfg.slot_pages(self.max_positions, self.device.type)
        self.kv: PagedKVCache = (model.new_slot_cache(cfg.max_num_seqs, slot, cfg.page_size) if slot else
                                 model.new_paged_cache(cfg.num_pages(self.max_positions), cfg.page_size))

    def sort_key(self, window: Window, table: list[int]) -> int:
        """Where a sequence goes in the batch: by slot (a chunk is a range of slots), or by key range
        on a paged pool (neighbours then share an attention chunk with little padding)."""
        return table[0] if self.kv.contiguous else window.end

    @torch.inference_mode()
    def run(self, windows: list[Window], tables: list[list[int]]) -> tuple[torch.Tensor, list[int]]:
        """Logits of every window's logit rows, concatenated in batch order, and each one's row count."""
        inp = build_batch(windows, tables, self.cfg.page_size, self.max_positions, self.device,
                          self.model.embed.weight.dtype, padded=self.cfg.layout == "padded",
                          slots=self.kv if isinstance(self.kv, SlotKVCache) else None)
        logits = self.model.forward_packed(inp.input_ids, inp.batch, self.kv, inp.rows)
        return logits, inp.row_counts
