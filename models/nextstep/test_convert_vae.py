"""The NextStep tokenizer converter against the original's layout: a small VAE written here in the
original's module names and maths (Flux-style LDM VAE: `encoder.down.{i}.block.{j}`, `mid.attn_1.q`,
1x1-conv attention, asymmetric-pad downsampling, the decoder's `up` list in reverse), saved as the
released tokenizer is (`config.json` of AutoEncoderParams + `checkpoint.pt`), converted, and loaded
by Tessera's ImageTokenizer: latents, tokens and decoded images must agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from models.images.reference_ldm import Decoder, Encoder
from models.nextstep.convert_vae import ORIGINAL_DEFAULTS, convert, diffusers_config, original_params
from models.nextstep.vae import ImageTokenizer, patchify, unpatchify

torch.set_num_threads(1)


class Original(nn.Module):
    def __init__(self, p: dict[str, Any]) -> None:
        super().__init__()
        self.p = p
        self.encoder = Encoder(p["ch"], p["ch_mult"], p["num_res_blocks"], p["z_channels"])
        self.decoder = Decoder(p["ch"], p["ch_mult"], p["num_res_blocks"], p["z_channels"])

    def latents(self, x: torch.Tensor) -> torch.Tensor:
        """The pipeline's `(posterior.mean - shift) * scale`, with encoder_norm over psz x psz patches
        (the original patchifies to (c p q) channels, LayerNorms them per position, un-patchifies)."""
        mean = self.encoder(x).chunk(2, dim=1)[0]
        if self.p["encoder_norm"]:
            n, c, h, w = mean.shape
            s = self.p["psz"]
            t = mean.reshape(n, c, h // s, s, w // s, s).permute(0, 2, 4, 1, 3, 5)  # n h w c p q
            t = F.layer_norm(t.reshape(n, h // s, w // s, c * s * s), (c * s * s,), eps=1e-6)
            mean = t.reshape(n, h // s, w // s, c, s, s).permute(0, 3, 1, 4, 2, 5).reshape(n, c, h, w)
        return (mean - self.p["shift_factor"]) * self.p["scaling_factor"]


PARAMS = {"resolution": 32, "in_channels": 3, "ch": 32, "out_ch": 3, "ch_mult": [1, 1, 2], "num_res_blocks": 1,
          "z_channels": 16, "scaling_factor": 1.0, "shift_factor": 0.0, "deterministic": True, "encoder_norm": True,
          "psz": 2}


def _original_dir(tmp: Path, params: dict[str, Any], extra: dict[str, torch.Tensor] | None = None,
                  ) -> tuple[Path, Original]:
    torch.manual_seed(0)
    model = Original(params).eval()
    for prm in model.parameters():  # not the default init: biases and norms off their trivial values
        prm.data.normal_(0.0, 0.05)
    src = tmp / "tokenizer"
    src.mkdir(parents=True)
    (src / "config.json").write_text(json.dumps(params))
    torch.save({**model.state_dict(), **(extra or {})}, src / "checkpoint.pt")
    return src, model


def test_converted_tokenizer_matches_the_original_layout(tmp_path: Path) -> None:
    src, ref = _original_dir(tmp_path, PARAMS, extra={"loss.logvar": torch.zeros(())})  # a non-VAE key
    convert(src, tmp_path / "vae")
    tok = ImageTokenizer.from_pretrained(tmp_path / "vae")
    assert (tok.patch_size, tok.normalize, tok.token_dim, tok.down_factor) == (2, True, 64, 8)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        want = ref.latents(x)
        tokens = tok.encode(x)
        assert torch.allclose(unpatchify(tokens, (4, 4), 2), want, atol=1e-5)  # encoder + token contract
        z = torch.randn(2, 16, 8, 8)
        assert torch.allclose(tok.vae.decode(z).sample, ref.decoder(z), atol=1e-5)  # decoder, tensor for tensor
        images = tok.decode(patchify(z, 2), (4, 4))
        assert torch.allclose(images, ref.decoder(z), atol=1e-5)  # scale 1, shift 0: decode(tokens) = decoder(z)


def test_scale_and_shift_travel_and_the_cli_writes_a_loadable_directory(tmp_path: Path) -> None:
    params = {**PARAMS, "scaling_factor": 0.5, "shift_factor": 0.25, "deterministic": False}
    src, ref = _original_dir(tmp_path, params)
    out = tmp_path / "vae"
    run = subprocess.run([sys.executable, "-m", "models.nextstep.convert_vae", str(src), str(out)],
                         capture_output=True, text=True, timeout=120, check=True)
    assert "wrote" in run.stdout and "uses its mean" in run.stdout  # the sampling original is named
    saved = json.loads((out / "config.json").read_text())
    assert (saved["scaling_factor"], saved["shift_factor"], saved["patch_size"], saved["normalize_latents"],
            saved["deterministic"]) == (0.5, 0.25, 2, True, True)
    tok = ImageTokenizer.from_pretrained(out)
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(unpatchify(tok.encode(x), (4, 4), 2), ref.latents(x), atol=1e-5)


def test_a_checkpoint_that_does_not_fit_its_config_is_refused(tmp_path: Path) -> None:
    src, _ = _original_dir(tmp_path, PARAMS)
    (src / "config.json").write_text(json.dumps({**PARAMS, "num_res_blocks": 2}))  # the weights have 1
    with pytest.raises(ValueError, match="does not fit the architecture"):
        convert(src, tmp_path / "vae")


def test_config_mapping_and_refusals() -> None:
    cfg = diffusers_config(dict(ORIGINAL_DEFAULTS))  # the released tokenizer's architecture
    assert cfg["block_out_channels"] == [128, 256, 512, 512] and cfg["layers_per_block"] == 2
    assert (cfg["use_quant_conv"], cfg["use_post_quant_conv"], cfg["latent_channels"]) == (False, False, 16)
    with pytest.raises(ValueError, match="normalises per latent position"):
        diffusers_config({**ORIGINAL_DEFAULTS, "encoder_norm": True, "psz": None})
    with pytest.raises(ValueError, match="multiple of 32"):
        diffusers_config({**ORIGINAL_DEFAULTS, "ch": 8})


def test_absent_keys_take_the_originals_defaults(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"psz": 2, "encoder_norm": True, "unrelated": 1}))
    p = original_params(tmp_path)
    assert (p["scaling_factor"], p["shift_factor"], p["ch_mult"], p["psz"]) == (0.3611, 0.1159, [1, 2, 4, 4], 2)
    assert "unrelated" not in p
