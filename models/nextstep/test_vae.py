"""(b) The image tokenizer: shapes through a tiny f8 / 16-channel AutoencoderKL, exact patchify
inverse and token layout, per-token LayerNorm statistics, scale/shift, save/load."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import AutoencoderKL

from models.nextstep.conftest import tiny_vae
from models.nextstep.vae import (
    ImageTokenizer,
    from_uint8,
    patchify,
    tiny_vae_config,
    to_uint8,
    token_layer_norm,
    unpatchify,
)


def test_patchify_layout_and_exact_inverse() -> None:
    torch.manual_seed(0)
    lat = torch.randn(2, 16, 6, 8)
    tok = patchify(lat, 2)
    assert tok.shape == (2, 12, 64)
    # token (i, j) in raster order, element c·4 + a·2 + b  ==  latent[c, 2i + a, 2j + b]  (nchpwq->nhwcpq)
    n, i, j, c, a, b = 1, 2, 3, 5, 1, 0
    assert tok[n, i * 4 + j, c * 4 + a * 2 + b] == lat[n, c, 2 * i + a, 2 * j + b]
    assert torch.equal(unpatchify(tok, (3, 4), 2), lat)
    assert torch.equal(patchify(unpatchify(tok, (3, 4), 2), 2), tok)


def test_token_layer_norm_statistics() -> None:
    x = torch.randn(3, 10, 64) * 5 + 2
    y = token_layer_norm(x)
    assert torch.allclose(y.mean(-1), torch.zeros(3, 10), atol=1e-5)
    assert torch.allclose(y.var(-1, unbiased=False), torch.ones(3, 10), atol=1e-4)


def test_tiny_vae_keeps_f8_and_16_channels() -> None:
    vae = tiny_vae()
    assert vae.downsample == 8 and vae.down_factor == 16 and vae.token_dim == 64
    assert vae.scale == 1.0 and vae.shift == 0.0  # the released tokenizer's constants
    img = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        z = vae.vae.encode(img).latent_dist.mean
    assert z.shape == (2, 16, 4, 6)


def test_encode_decode_round_trip_shapes_and_token_stats() -> None:
    vae = tiny_vae()
    img = torch.rand(2, 3, 32, 48) * 2 - 1
    tok = vae.encode(img)
    assert tok.shape == (2, 2 * 3, 64)
    assert torch.allclose(tok.mean(-1), torch.zeros(2, 6), atol=1e-5)  # normalised per token
    assert torch.allclose(tok.var(-1, unbiased=False), torch.ones(2, 6), atol=1e-3)
    out = vae.decode(tok, (2, 3))
    assert out.shape == img.shape and torch.isfinite(out).all()
    # encode == LayerNorm(patchify(posterior mean)) exactly, with scale 1 / shift 0
    with torch.no_grad():
        z = vae.vae.encode(img).latent_dist.mean
    assert torch.equal(tok, token_layer_norm(patchify(z, 2)))


def test_scale_and_shift_are_applied_and_inverted() -> None:
    cfg = {**tiny_vae_config(), "scaling_factor": 0.5, "shift_factor": 0.25}
    torch.manual_seed(0)
    vae = ImageTokenizer.from_config(cfg).eval()
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    tok = vae.encode(img)
    # (LN(z) - shift) * scale: per-token mean -shift·scale, std scale
    assert torch.allclose(tok.mean(-1), torch.full((1, 4), -0.125), atol=1e-5)
    assert torch.allclose(tok.std(-1, unbiased=False), torch.full((1, 4), 0.5), atol=1e-3)
    lat = vae.tokens_to_latent(tok)
    with torch.no_grad():
        z = vae.vae.encode(img).latent_dist.mean
    assert torch.allclose(lat, unpatchify(token_layer_norm(patchify(z, 2)), (2, 2), 2), atol=1e-6)


def test_save_load(tmp_path: Path) -> None:
    vae = tiny_vae()
    vae.save_pretrained(tmp_path)
    back = ImageTokenizer.from_pretrained(tmp_path)
    assert isinstance(back.vae, AutoencoderKL) and back.patch_size == 2 and back.normalize
    img = torch.rand(1, 3, 32, 32) * 2 - 1
    assert torch.equal(vae.encode(img), back.encode(img))


def test_uint8_conversions() -> None:
    x = torch.tensor([-1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    u = to_uint8(x)
    assert u.shape == (1, 1, 1, 3) and u.flatten().tolist() == [0, 128, 255]
    assert torch.allclose(from_uint8(u), torch.tensor([-1.0, 128 / 127.5 - 1, 1.0]).view(1, 3, 1, 1), atol=1e-6)
