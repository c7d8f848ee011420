"""Chameleon's VQGAN as Orthus runs it (models.orthus.vqgan): the encoder against transformers'
ChameleonVQVAE (encoder -> quant_conv, the original's `encode_wo_quant`), the decoder against the
taming layout written independently (models.images.reference_ldm), the processor's pixel maths, and an
Orthus checkpoint without a vae/ directory served through the image backend on its own VQGAN."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import ChameleonVQVAEConfig
from transformers.models.chameleon.modeling_chameleon import ChameleonVQVAE

from models.images import ImageJob, load_backend, native_resolution
from models.images.reference_ldm import Decoder
from models.nextstep.vae import from_uint8, to_uint8
from models.orthus.vqgan import PREFIX, RESCALE, VQTokenizer, load_vq_tokenizer, vq_params

torch.set_num_threads(1)

VQ = {"embed_dim": 16, "num_embeddings": 32, "latent_channels": 32, "resolution": 16, "in_channels": 3,
      "base_channels": 32, "channel_multiplier": [1, 2], "num_res_blocks": 1}


def _tensors(vq: dict[str, Any], seed: int = 0) -> tuple[dict[str, torch.Tensor], ChameleonVQVAE, Decoder]:
    """model.vqmodel.* of a random VQGAN: transformers' encoder half, an independent taming decoder."""
    torch.manual_seed(seed)
    hf = ChameleonVQVAE(ChameleonVQVAEConfig(**vq)).eval()
    dec = Decoder(vq["base_channels"], vq["channel_multiplier"], vq["num_res_blocks"], vq["latent_channels"]).eval()
    for p in [*hf.parameters(), *dec.parameters()]:  # off the default init (norms at 1, biases at 0)
        p.data.normal_(0.0, 0.05)
    tensors = {PREFIX + k: v.clone() for k, v in hf.state_dict().items()}
    tensors.update({PREFIX + "decoder." + k: v.clone() for k, v in dec.state_dict().items()})
    return tensors, hf, dec


def _config_dir(tmp: Path, vq: dict[str, Any]) -> Path:
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "config.json").write_text(json.dumps({"vq_config": {"model_type": "chameleon_vqgan", **vq}}))
    return tmp


def test_latents_pixels_and_images_match_the_original(tmp_path: Path) -> None:
    tensors, hf, dec = _tensors(VQ)
    tok, native = load_vq_tokenizer(_config_dir(tmp_path, VQ), tensors)
    assert isinstance(tok, VQTokenizer) and native == 16 and tok.grid(16, 16) == (8, 8) and tok.token_dim == 16
    u8 = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (2, 16, 16, 3), dtype=np.uint8))
    with torch.no_grad():
        # encode_wo_quant on the processor's pixels (x * 0.0078 - 1), permuted to raster tokens
        want = hf.quant_conv(hf.encoder(u8.permute(0, 3, 1, 2).float() * RESCALE - 1))
        tokens = tok.encode(from_uint8(u8))
        assert torch.allclose(tokens, want.permute(0, 2, 3, 1).reshape(2, 64, 16), atol=1e-5)
        z = torch.randn(2, 64, 16)
        ref = dec(hf.post_quant_conv(z.reshape(2, 8, 8, 16).permute(0, 3, 1, 2)))  # post_quant_conv -> decoder
        images = tok.decode(z, (8, 8))
        assert torch.allclose((images + 1) * 127.5 * RESCALE - 1, ref, atol=1e-4)
        # postprocess_pixel_values: (x + 1) / 0.0078, clipped to bytes
        pixels = ((ref + 1) / RESCALE).clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1)
        assert (to_uint8(images).int() - pixels.int()).abs().max() <= 1


def test_a_checkpoint_without_the_decoder_or_with_other_tensors_is_refused(tmp_path: Path) -> None:
    tensors, _, _ = _tensors(VQ)
    d = _config_dir(tmp_path, VQ)
    with pytest.raises(ValueError, match="no VQGAN decoder"):
        load_vq_tokenizer(d, {k: v for k, v in tensors.items() if ".decoder." not in k})
    with pytest.raises(ValueError, match="were not converted"):  # a tensor the network has no place for
        load_vq_tokenizer(d, {**tensors, PREFIX + "decoder.extra.weight": torch.zeros(1)})
    _config_dir(tmp_path, {**VQ, "num_res_blocks": 2})
    with pytest.raises(ValueError, match="does not fit vq_config"):
        load_vq_tokenizer(d, tensors)


@pytest.mark.parametrize("bad,match", [({"attn_resolutions": [8]}, "attn_resolutions"),
                                       ({"attn_type": "linear"}, "only vanilla"),
                                       ({"double_latent": True}, "only vanilla")])
def test_vq_configs_the_network_does_not_run_are_refused(tmp_path: Path, bad: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        vq_params(_config_dir(tmp_path, {**VQ, **bad}))


def test_an_orthus_checkpoint_without_vae_serves_on_its_own_vqgan(image_checkpoints: Path, tmp_path: Path) -> None:
    # The tiny Orthus (64-d features, 3x3 patches of a 48 px image) with a VQGAN of that geometry in
    # place of its diffusers vae/: 5 levels (f16), embed_dim 64.
    src = image_checkpoints / "shapes-orthus"
    ckpt = tmp_path / "orthus-vq"
    shutil.copytree(src, ckpt, ignore=shutil.ignore_patterns("vae"))
    vq = {"embed_dim": 64, "num_embeddings": 16, "latent_channels": 32, "resolution": 48, "in_channels": 3,
          "base_channels": 32, "channel_multiplier": [1, 1, 1, 1, 1], "num_res_blocks": 1}
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["vq_config"] = {**cfg["vq_config"], **vq}
    (ckpt / "config.json").write_text(json.dumps(cfg))
    weights = load_file(str(ckpt / "model.safetensors"))
    vq_tensors, _, _ = _tensors(vq, seed=1)
    save_file({**weights, **{k: v.contiguous() for k, v in vq_tensors.items()}}, str(ckpt / "model.safetensors"))

    assert native_resolution(ckpt) == 48
    backend, parts = load_backend("orthus", ckpt)
    assert isinstance(parts.vae, VQTokenizer) and parts.grid == (3, 3) and parts.num_patches == 9
    job = ImageJob("t2i", "a red circle", steps=2, guidance_scale=3.0, image_guidance_scale=0.0, seed=3, width=48,
                   height=48, preview=False)
    images = backend.generate([job], None)
    assert images.shape == (1, 3, 48, 48) and torch.isfinite(images).all()
    source = np.random.default_rng(1).integers(0, 256, (48, 48, 3), dtype=np.uint8)
    prompts = backend.question_prompts(source[None], ["what colour is the square?"])  # type: ignore[attr-defined]
    assert len(prompts) == 1
    # The features the model sees are the VQGAN's: the same image gives the same encoder tokens.
    assert torch.equal(parts.encode_images(source[None]), parts.vae.encode(from_uint8(torch.from_numpy(source[None]))))
