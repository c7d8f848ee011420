"""The image models behind the image and understanding workers and the image benchmark, one calling
convention each: `load_backend(name, checkpoint_dir, ...)` -> (backend, parts).

A checkpoint directory holds the model, `tokenizer.json` and the shared VAE in `vae/` (`parts`). Rows
of one call share steps and guidance scales: the image worker's batcher keys requests on them.

An image must not depend on what it was batched with (and a retried job repeats it):
- every request gets its own seeded generator;
- its prompt rows are left-padded to `padded_length(job)`, its own length rounded up to the bucket,
  and the engine batches only requests of one bucket. Padding to the batch's longest row instead
  gives a row other absolute positions (NextStep counts padding, like the reference) and another
  padded key length for SDPA, so other rounding, which the autoregressive loop, the sampler and CFG
  amplify: in bfloat16 a short prompt batched with a long one came out up to 12/255 off on the tiny
  checkpoints and 83/255 on the trained NextStep. Buckets make that exact, at the price of a few pad
  tokens per row and of not batching prompts of different buckets together;
- Orthus embeds fed-back patches one request at a time (`models.orthus.generate.patch_embeddings`);
- the VAE encodes and decodes one image at a time (see `ImageParts`).
With these, bfloat16 on CPU gives bit-identical images alone and batched. What remains is the kernels'
own row-count dependence, never padding: float32 BLAS (MKL) takes other paths for few rows, ≈1e-5 on
the tokens and at most 1/255 after decoding; GPU GEMMs pick tiles by batch size. Removing it would
take batch-invariant kernels or running each request alone, i.e. giving up batching.

Model code only: no protobuf, Ray or services imports (the workers map their messages onto `ImageJob`).
"""

from __future__ import annotations

from models.images.base import ImageBackend, ImageJob, PatchHook
from models.images.load import load_backend
from models.images.nextstep import NextStepBackend, NextStepSampling
from models.images.orthus import OrthusBackend
from models.images.parts import ImageParts, TextCodec, load_parts, native_resolution

__all__ = ["ImageBackend", "ImageJob", "ImageParts", "NextStepBackend", "NextStepSampling", "OrthusBackend",
           "PatchHook", "TextCodec", "load_backend", "load_parts", "native_resolution"]
