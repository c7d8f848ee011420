"""Convert NextStep's released image tokenizer (`stepfun-ai/NextStep-1-f8ch16-Tokenizer`: a Flux-layout
VAE as `checkpoint.pt` + `config.json` of its `AutoEncoderParams`) into the directory the image
workers load: a diffusers `AutoencoderKL` (`config.json` + `diffusion_pytorch_model.safetensors`)
plus the token contract's keys (`patch_size`, `normalize_latents`, `deterministic`).

The tensor names are mapped by diffusers' own LDM-VAE converter (the one `from_single_file` uses for
Flux's `ae.safetensors`); the architecture maps one to one (no quant convs, GroupNorm(32), one-head
mid attention, asymmetric-pad downsampling). What this adds is the config: the original's
`ch`/`ch_mult`/`num_res_blocks`/`z_channels`/`resolution`, its `scaling_factor`/`shift_factor`, and
its `psz`/`encoder_norm`/`deterministic`, which are the NextStep token contract (models.nextstep.vae).

    python -m models.nextstep.convert_vae <tokenizer dir> <model dir>/vae
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL

from models.nextstep.vae import ldm_blocks, load_ldm_weights

# AutoEncoderParams' fields and defaults in the original code (a key absent from config.json).
ORIGINAL_DEFAULTS: dict[str, Any] = {
    "resolution": 256, "in_channels": 3, "ch": 128, "out_ch": 3, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2,
    "z_channels": 16, "scaling_factor": 0.3611, "shift_factor": 0.1159, "deterministic": False,
    "encoder_norm": False, "psz": None,
}


def original_params(src: Path) -> dict[str, Any]:
    """The original's AutoEncoderParams from `config.json` (its from_pretrained ignores other keys)."""
    cfg = json.loads((src / "config.json").read_text())
    return {k: cfg.get(k, v) for k, v in ORIGINAL_DEFAULTS.items()}


def diffusers_config(p: dict[str, Any]) -> dict[str, Any]:
    """The AutoencoderKL config with the original's architecture and latent scale/shift."""
    if p["psz"] is None and p["encoder_norm"]:
        # The original then normalises each latent position over its channels, not each patch token.
        raise ValueError("encoder_norm without psz normalises per latent position; Tessera's token "
                         "contract normalises 2x2 patch tokens (psz 2)")
    return {
        **ldm_blocks(p["ch"], p["ch_mult"], p["num_res_blocks"]),
        "in_channels": p["in_channels"], "out_channels": p["out_ch"],
        "latent_channels": p["z_channels"], "sample_size": p["resolution"],
        "scaling_factor": p["scaling_factor"], "shift_factor": p["shift_factor"], "use_quant_conv": False,
        "use_post_quant_conv": False, "mid_block_add_attention": True, "force_upcast": False,
    }


def load_original_state(src: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(src / "checkpoint.pt", map_location="cpu", weights_only=True)
    if not isinstance(sd, dict):
        raise ValueError(f"{src / 'checkpoint.pt'} holds a {type(sd).__name__}, not a state dict")
    # The original loads it with strict=False: anything outside encoder./decoder. is not the VAE.
    return {k: v for k, v in sd.items() if k.startswith(("encoder.", "decoder."))}


def convert(src: Path, out: Path, dtype: torch.dtype = torch.float32) -> AutoencoderKL:
    """Write the converted tokenizer to `out`; returns the loaded diffusers VAE. Every tensor of the
    original must land in the diffusers model and every diffusers tensor must come from it."""
    params = original_params(src)
    cfg = diffusers_config(params)
    vae = AutoencoderKL(**cfg)
    load_ldm_weights(vae, load_original_state(src), cfg, "the checkpoint does not fit the architecture of its config",
                     "original")
    vae = vae.to(dtype).eval()
    out.mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(str(out))
    cfg_path = out / "config.json"
    saved = json.loads(cfg_path.read_text())
    # Tessera encodes input images with the posterior's mean; an original that samples (deterministic
    # false) differs from that only by the posterior's noise on edit inputs (see main's note).
    saved.update(patch_size=params["psz"] or 1, normalize_latents=bool(params["encoder_norm"]), deterministic=True)
    cfg_path.write_text(json.dumps(saved, indent=2) + "\n")
    return vae


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="the original tokenizer: config.json + checkpoint.pt")
    ap.add_argument("out", type=Path, help="where to write the diffusers directory (a NextStep model's vae/)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    args = ap.parse_args()
    vae = convert(args.src, args.out, getattr(torch, args.dtype))
    n = sum(t.numel() for t in vae.parameters())
    print(f"wrote {args.out} ({n / 1e6:.1f}M parameters)")
    if not original_params(args.src)["deterministic"]:
        print("note: the original samples the posterior when it encodes an edit's input image; Tessera uses its "
              "mean (deterministic)")


if __name__ == "__main__":
    main()
