"""An independent implementation of the LDM / taming VAE layout in the originals' module names and maths
(`encoder.down.{i}.block.{j}`, `mid.block_1`, `mid.attn_1.q` as 1x1 convs, asymmetric-pad downsampling,
nearest x2 upsampling, the decoder's `up` list indexed from the finest level): what the converters
into diffusers (models.nextstep.convert_vae, models.orthus.vqgan) are checked against. Only tests
import it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


class Res(nn.Module):
    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2, self.conv2 = norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))
        return (self.nin_shortcut(x) if hasattr(self, "nin_shortcut") else x) + h


class Attn(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm = norm(c)
        self.q, self.k, self.v, self.proj_out = (nn.Conv2d(c, c, 1) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        b, c, hh, ww = h.shape
        q, k, v = (f(h).flatten(2).transpose(1, 2)[:, None] for f in (self.q, self.k, self.v))  # b 1 (hw) c
        a = F.scaled_dot_product_attention(q, k, v)[:, 0].transpose(1, 2).reshape(b, c, hh, ww)
        return x + self.proj_out(a)


class Mid(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block_1, self.attn_1, self.block_2 = Res(c, c), Attn(c), Res(c, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


class Level(nn.Module):
    def __init__(self, blocks: list[Res], resample: nn.Conv2d | None, name: str) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if resample is not None:
            self.add_module(name, nn.Module())
            getattr(self, name).conv = resample


class Encoder(nn.Module):
    def __init__(self, ch: int, mult: list[int], blocks: int, z: int) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(3, ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = ch
        for i, m in enumerate(mult):
            res = []
            for _ in range(blocks):
                res.append(Res(cin, ch * m))
                cin = ch * m
            last = i == len(mult) - 1
            self.down.append(Level(res, None if last else nn.Conv2d(cin, cin, 3, stride=2), "downsample"))
        self.mid, self.norm_out, self.conv_out = Mid(cin), norm(cin), nn.Conv2d(cin, 2 * z, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for blk in level.block:
                h = blk(h)
            if hasattr(level, "downsample"):
                h = level.downsample.conv(F.pad(h, (0, 1, 0, 1)))  # the asymmetric pad
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    def __init__(self, ch: int, mult: list[int], blocks: int, z: int) -> None:
        super().__init__()
        cin = ch * mult[-1]
        self.conv_in, self.mid = nn.Conv2d(z, cin, 3, padding=1), Mid(cin)
        levels: list[Level] = []
        for i in reversed(range(len(mult))):
            res = []
            for _ in range(blocks + 1):
                res.append(Res(cin, ch * mult[i]))
                cin = ch * mult[i]
            levels.insert(0, Level(res, nn.Conv2d(cin, cin, 3, padding=1) if i else None, "upsample"))
        self.up = nn.ModuleList(levels)
        self.norm_out, self.conv_out = norm(cin), nn.Conv2d(cin, 3, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            for blk in level.block:
                h = blk(h)
            if hasattr(level, "upsample"):
                h = level.upsample.conv(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))
