"""Train a tiny Orthus on the shapes world: LM cross-entropy on text + v-prediction diffusion on patches.

Layouts are exactly what models/orthus builds at inference (prompt.build_prompt, generate.image_loop):
    t2i    bos caption sep BOI | z_0 .. z_{N-1}            (z_k predicted from the state before it)
    edit   bos instruction BOI src EOI sep BOI | z_0 .. z_{N-1}   (prompt.edit_rows: why this order)
    vqa    bos BOI img EOI question sep | answer eos        (text_loop stops on sep / eos)
Image features are the shared VAE's tokens (latent_dim 64, N = 4); `latent_scale` is 1 because those
tokens are LayerNormed to unit variance already (the original's 0.1 brought VQGAN features there).
Condition dropout trains the rows the samplers use for guidance: the empty prompt `bos sep` for T2I
CFG and [image only], [empty] for the pix2pix rows of `Orthus.edit_image`.
Diffusion objective (brief §1.1): DDPM schedule with zero-terminal-SNR betas, v-prediction, MSE,
each condition repeated `diffusion_batch_mul` times with fresh t and noise.
"""

from __future__ import annotations

import dataclasses
import functools
import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from tokenizers import Tokenizer

from lab.training.images.data import (
    BOS_TOKEN,
    IMAGE_SIZE,
    ORTHUS_SPECIALS,
    SEP_TOKEN,
    Example,
    FeatureBank,
    ImageBatch,
    ImageStream,
    Layout,
    Phase,
    Segment,
    make_pool,
    special_id,
    train_phases,
    with_context_noise,
)
from lab.worlds.tokenizer import EOS_TOKEN
from models.nextstep.vae import ImageTokenizer
from models.orthus.config import OrthusConfig
from models.orthus.head import make_scheduler
from models.orthus.model import Orthus
from models.orthus.vision import to_head_space

NUM_PATCHES = (IMAGE_SIZE // 16) ** 2  # 48x48 image -> 3x3 VAE tokens, one per grid cell


@dataclass(slots=True)
class OrthusRecipe:
    hidden: int = 128
    layers: int = 4
    heads: int = 4
    head_width: int = 256
    head_blocks: int = 3
    # Soft-VQ codes. With unit-variance 64-d features softmax(-d) starts nearly one-hot (a hard quantiser
    # of source images: more codes keep more detail for editing and VQA); trained, the codes cluster and
    # the largest weight averaged 0.28 over held-out patches of the previous checkpoint.
    codebook: int = 1024
    steps: int = 7000  # 1642 s beside NextStep on 2026-11-29 (10000 before the edit phase)
    lr: float = 1e-3
    batch: int = 32
    pool: int = 12000
    diffusion_batch_mul: int = 4
    lm_weight: float = 1.0
    drop_text: float = 0.1  # T2I: caption dropped -> the CFG uncond row; edit: the [image only] row
    drop_all: float = 0.05  # edit: the [empty] row
    mix: tuple[float, float, float] = (0.4, 0.3, 0.3)  # t2i, edit, vqa
    seed: int = 0
    # Late phase, after the main steps: a pool of its own weighted toward understanding, at a lower
    # rate with a fresh optimizer (a 1500-step trial lifted VQA 0.76 -> 0.82 and T2I 0.46 -> 0.52).
    late_steps: int = 3000  # 647 s beside NextStep on 2026-11-29
    late_mix: tuple[float, float, float] = (0.2, 0.3, 0.5)
    late_lr: float = 3e-4
    late_seed: int = 7
    # Wide phase, after the late one: a fresh pool five times the size. The late-phase model answered
    # 298/300 of its training questions but 239/300 held-out ones: it memorised its 6000 questions.
    # 3000 steps on 30000 fresh ones: held-out 271/300, T2I 0.37 -> 0.52 (200 problems each).
    wide_steps: int = 3000  # 658 s beside NextStep on 2026-11-29, plus encoding the pool
    wide_pool: int = 60000
    wide_mix: tuple[float, float, float] = (0.2, 0.3, 0.5)
    wide_lr: float = 3e-4
    wide_seed: int = 11
    # Edit phase, last: an edit-heavy fresh pool, as NextStep's edit phase (edits are learnt late). A
    # 1500-step trial on a noise-fine-tuned model: edits 0.16 -> 0.23, T2I 0.69 -> 0.70 (96 problems).
    # The instruction before the source image (prompt.edit_rows), same steps, from scratch: edits 0.365 ->
    # 0.865, T2I 0.855 -> 0.905, VQA 0.92 -> 0.915 (200 problems); kept shapes right 119/271 -> 258/271.
    edit_steps: int = 3000  # 731 s beside NextStep on 2026-11-29
    edit_mix: tuple[float, float, float] = (0.2, 0.6, 0.2)
    edit_lr: float = 3e-4
    edit_seed: int = 17
    # Std of the noise on generated-image features where they are the model's input (every phase).
    # The VAE encoder sees past its own cell, so a clean cell's features carry its neighbours' content
    # (re-encoding a render without the later cells moves them by 0.8 in norm; features have norm 8).
    # Teacher-forced, the checkpoint before it drew held-out captions at 0.95 (it read the next cell off the
    # previous ones); fed renders without the cells still to come, 0.06; free-running, 0.58. With the
    # noise the caption is the only reliable source. 1500-step fine-tunes of that model, 96 problems:
    # std 0 / 0.3 / 0.6 / 1.2 / 2.0 -> T2I 0.57 / 0.63 / 0.65 / 0.69 / 0.66.
    context_noise: float = 1.0

    def __post_init__(self) -> None:
        if min(self.hidden, self.layers, self.heads, self.head_width, self.head_blocks, self.codebook) <= 0:
            raise ValueError("model sizes must be positive")
        if self.hidden % self.heads:
            raise ValueError(f"hidden {self.hidden} not divisible by heads {self.heads}")
        if self.steps <= 0 or self.lr <= 0 or self.batch <= 0 or self.diffusion_batch_mul <= 0:
            raise ValueError("steps, lr, batch and diffusion_batch_mul must be positive")
        if not (0 <= self.drop_text <= 1 and 0 <= self.drop_all <= 1 and self.drop_text + self.drop_all <= 1):
            raise ValueError("dropout probabilities must be in [0, 1] and sum to <= 1")
        for name in ("mix", "late_mix", "wide_mix", "edit_mix"):
            m = getattr(self, name)
            if len(m) != 3 or min(m) < 0 or sum(m) <= 0:
                raise ValueError(f"{name} must be three non-negative weights, got {m}")
        if min(self.late_steps, self.wide_steps, self.edit_steps) < 0 or min(self.late_lr, self.wide_lr,
                                                                            self.edit_lr) <= 0:
            raise ValueError("late/wide/edit steps must be >= 0 and their rates positive")
        if self.context_noise < 0:
            raise ValueError(f"context_noise must be >= 0, got {self.context_noise}")
        if self.pool <= 0 or self.wide_pool <= 0:
            raise ValueError("pools must be positive")


def make_config(tok: Tokenizer, vae: ImageTokenizer, r: OrthusRecipe) -> OrthusConfig:
    text_vocab = tok.get_vocab_size()
    # Image-token rows sit after the text vocabulary so that no text token shares an embedding with them.
    return OrthusConfig(
        vocab_size=text_vocab + r.codebook, hidden_size=r.hidden, intermediate_size=4 * r.hidden,
        num_layers=r.layers, num_heads=r.heads, num_kv_heads=r.heads, max_position_embeddings=256,
        bos_token_id=special_id(tok, BOS_TOKEN), eos_token_id=special_id(tok, EOS_TOKEN),
        pad_token_id=special_id(tok, EOS_TOKEN), image_token_id=special_id(tok, ORTHUS_SPECIALS["image"]),
        boi_token_id=special_id(tok, ORTHUS_SPECIALS["boi"]), eoi_token_id=special_id(tok, ORTHUS_SPECIALS["eoi"]),
        sep_token_id=special_id(tok, SEP_TOKEN), image_token_offset=text_vocab, codebook_size=r.codebook,
        latent_dim=vae.token_dim, image_seq_length=NUM_PATCHES, head_width=r.head_width,
        head_num_res_blocks=r.head_blocks, latent_scale=1.0,
        prompt_format="tessera",  # trained with an empty T2I guidance row (models/orthus/prompt.py)
    )


def new_model(cfg: OrthusConfig, bank: FeatureBank | None = None, seed: int = 0) -> Orthus:
    torch.manual_seed(seed)
    model = Orthus(cfg)
    if bank is not None and bank.rows:
        # Initialise codebook_in from real features (the original starts it from the VQ codebook):
        # a random table would put every feature far from all codes and softmax(-d) would saturate.
        feats = torch.cat(list(bank.rows.values()))
        idx = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))[:cfg.codebook_size]
        with torch.no_grad():
            model.vision.codebook.weight[:len(idx)] = feats[idx]
    return model


def make_layout(tok: Tokenizer, cfg: OrthusConfig, r: OrthusRecipe) -> Layout:
    bos, sep, boi, eoi, eos = cfg.bos_token_id, cfg.sep_token_id, cfg.boi_token_id, cfg.eoi_token_id, cfg.eos_token_id

    def layout(ex: Example, bank: FeatureBank, rng: random.Random) -> tuple[list[Segment], list[int]]:
        text = tok.encode(ex.text).ids
        u = rng.random()
        if ex.task == "t2i":
            assert ex.target is not None
            text = [] if u < r.drop_text else text
            return [[bos, *text, sep, boi], (bank[ex.target], True)], []
        assert ex.source is not None
        if ex.task == "edit":
            assert ex.target is not None
            if u < r.drop_all:
                return [[bos, sep, boi], (bank[ex.target], True)], []
            text = [] if u < r.drop_all + r.drop_text else text
            return [[bos, *text, boi], (bank[ex.source], False), [eoi, sep, boi], (bank[ex.target], True)], []
        return [[bos, boi], (bank[ex.source], False), [eoi, *text, sep]], [*tok.encode(ex.answer).ids, eos]

    return layout


def orthus_loss(model: Orthus, batch: ImageBatch, gen: torch.Generator, diffusion_batch_mul: int = 4,
                lm_weight: float = 1.0, context_noise: float = 0.0) -> torch.Tensor:
    cfg = model.config
    # Noise on the generated inputs, not scheduled sampling (NextStep's edit phase): 1000 steps fed half
    # their own samples scored T2I 0.46 / edits 0.125 against a control's 0.485 / 0.135.
    feats = with_context_noise(batch, batch.feats, context_noise, gen)
    h, logits = model(batch.ids, [feats] if feats.numel() else None)
    loss = h.new_zeros(())
    if (batch.lm_targets != -100).any():
        loss = loss + lm_weight * F.cross_entropy(logits.flatten(0, 1).float(), batch.lm_targets.flatten(),
                                                  ignore_index=-100)
    if batch.target_pos.numel():
        # The patch at slot p is predicted from the state at p - 1 (BOI for the first patch).
        cond = h.flatten(0, 1)[batch.target_pos - 1].repeat(diffusion_batch_mul, 1)
        x0 = to_head_space(batch.target_feats, cfg.latent_scale).repeat(diffusion_batch_mul, 1)
        sched = _ddpm()
        t = torch.randint(sched.config.num_train_timesteps, (x0.shape[0],), generator=gen).to(x0.device)
        noise = torch.randn(x0.shape, generator=gen).to(x0.device)
        xt = sched.add_noise(x0, noise, t)
        v = sched.get_velocity(x0, noise, t)
        loss = loss + F.mse_loss(model.head(xt, t, cond).float(), v)
    return loss


@functools.cache
def _ddpm() -> DDPMScheduler:
    # The training schedule is the sampler's (make_scheduler), so train and sample noise levels agree.
    sched = make_scheduler("ddpm")
    assert isinstance(sched, DDPMScheduler)
    return sched


def build_stream(tok: Tokenizer, vae: ImageTokenizer, r: OrthusRecipe,
                 examples: list[Example] | None = None) -> tuple[OrthusConfig, FeatureBank, ImageStream]:
    cfg = make_config(tok, vae, r)
    examples = examples if examples is not None else make_pool(r.pool, r.seed, dict(zip(
        ("t2i", "edit", "vqa"), r.mix, strict=True)))
    bank = FeatureBank(vae, examples)
    stream = ImageStream(examples, bank, make_layout(tok, cfg, r), cfg.image_token_id, cfg.pad_token_id or 0,
                         r.batch, r.seed)
    return cfg, bank, stream


def train_orthus(tok: Tokenizer, vae: ImageTokenizer, r: OrthusRecipe, device: str = "cpu",
                 log_every: int = 100) -> tuple[Orthus, list[float]]:
    cfg, bank, stream = build_stream(tok, vae, r)
    model = new_model(cfg, bank, r.seed).to(device)

    def loss(b: ImageBatch, g: torch.Generator) -> torch.Tensor:
        return orthus_loss(model, b, g, r.diffusion_batch_mul, r.lm_weight, context_noise=r.context_noise)

    late = dataclasses.replace(r, mix=r.late_mix, seed=r.late_seed)
    wide = dataclasses.replace(r, mix=r.wide_mix, seed=r.wide_seed, pool=r.wide_pool)
    edit = dataclasses.replace(r, mix=r.edit_mix, seed=r.edit_seed)
    losses = train_phases(model, [
        Phase("orthus", r.steps, r.lr, r.seed, lambda: stream),
        Phase("orthus-late", r.late_steps, r.late_lr, r.late_seed, lambda: build_stream(tok, vae, late)[2], 50),
        Phase("orthus-wide", r.wide_steps, r.wide_lr, r.wide_seed, lambda: build_stream(tok, vae, wide)[2], 50),
        Phase("orthus-edit", r.edit_steps, r.edit_lr, r.edit_seed, lambda: build_stream(tok, vae, edit)[2], 50),
    ], r.batch, loss, log_every, device)
    return model.eval(), losses
