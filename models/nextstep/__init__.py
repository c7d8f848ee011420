"""NextStep-1: a Qwen2-style decoder that writes images as continuous tokens (brief §2).

Clean-room plain-PyTorch re-implementation. One module per job:
- `config`: `NextStepConfig` (the HF `config.json` keys of the released checkpoints);
- `vae`: the f8 / 16-channel image tokenizer (diffusers `AutoencoderKL`) and the 2×2 patchify;
- `projectors`: latent token (64) <-> backbone hidden size;
- `head`: the flow-matching AdaLN-MLP head, timestep shift, CFG and the Euler ODE / SDE samplers;
- `model`: `NextStep` (backbone = `models.transformer.Transformer`, qwen2 layout);
- `generate`: prompt layout (image area, boi/eoi, placeholders), CFG rows, the KV-cached AR loop;
- `checkpoint`: load / save the HF-format directory.
"""

from __future__ import annotations
