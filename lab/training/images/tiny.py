"""Tiny randomly initialised image checkpoints for the service tests (seconds to build, not minutes).

The trained checkpoints are measured by the benchmark; the service tests check plumbing (sizes,
progress, batching, errors), which any weights exercise. The layout is the training script's:
<out>/shapes-{orthus,nextstep} each with the model, tokenizer.json and vae/.
"""

from __future__ import annotations

from pathlib import Path

import torch

from lab.training.images import data
from lab.training.images import nextstep as ns
from lab.training.images import orthus as ot
from lab.training.images import vae as tv
from models.nextstep.checkpoint import save_nextstep
from models.orthus.checkpoint import save_orthus

ORTHUS = ot.OrthusRecipe(hidden=32, layers=2, heads=2, head_width=32, head_blocks=1, codebook=16, batch=4, pool=8)
# The tiny checkpoints' native size is the trained ones' (their VAE's sample_size), one patch per 16 pixels.
NATIVE = data.IMAGE_SIZE
PATCHES = (NATIVE // 16) ** 2
NEXTSTEP = ns.NextStepRecipe(hidden=32, layers=2, heads=2, kv_heads=1, head_width=32, head_layers=1, batch=4,
                             pool=8)


def build_tiny_image_checkpoints(out: Path) -> Path:
    """Write <out>/shapes-orthus and <out>/shapes-nextstep; returns `out`."""
    torch.manual_seed(0)
    tok = data.train_tokenizer(100)
    vae = tv.new_tokenizer(8, seed=0).eval()
    cfg, bank, _ = ot.build_stream(tok, vae, ORTHUS)
    cfg_n, _, _ = ns.build_stream(tok, vae, NEXTSTEP)
    for name, save, model in (("shapes-orthus", save_orthus, ot.new_model(cfg, bank)),
                              ("shapes-nextstep", save_nextstep, ns.new_model(cfg_n))):
        d = out / name
        save(model.eval(), d)  # type: ignore[operator]
        data.save_tokenizer(tok, d)
        vae.save_pretrained(d / "vae")
    return out
