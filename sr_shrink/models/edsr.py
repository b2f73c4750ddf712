"""EDSR (Lim et al., 2017) with the module layout and state_dict keys of the reference EDSR-PyTorch code.

Keys: ``sub_mean``/``add_mean`` (MeanShift 1x1 convs), ``head.0``, ``body.N.body.{0,2}``, ``body.{n}``
(the conv after the residual blocks), ``tail.0.*`` (upsampler convs) and ``tail.1``, so the public
EDSR-baseline (64 x 16) and EDSR (256 x 32, res_scale 0.1) checkpoints load with ``strict=True``.
Input and output are RGB in [0, rgb_range] (255 for the public checkpoints).

``skip="bicubic"`` adds a parameter-free global bicubic skip (output = net(x) + bicubic(x)); with the last
conv zero-initialised this makes CPU training converge much faster. It changes no keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

RGB_MEAN = (0.4488, 0.4371, 0.4040)


def default_conv(in_channels: int, out_channels: int, kernel_size: int = 3) -> nn.Conv2d:
    """Return a same-padded conv with bias, as in EDSR-PyTorch."""
    return nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)


class MeanShift(nn.Conv2d):
    """A fixed 1x1 conv that subtracts (sign=-1) or adds (sign=+1) the dataset mean times rgb_range."""

    def __init__(self, rgb_range: float, rgb_mean=RGB_MEAN, rgb_std=(1.0, 1.0, 1.0), sign: int = -1):
        super().__init__(3, 3, kernel_size=1)
        std = torch.tensor(rgb_std)
        self.weight.data = torch.eye(3).view(3, 3, 1, 1) / std.view(3, 1, 1, 1)
        self.bias.data = sign * rgb_range * torch.tensor(rgb_mean) / std
        for p in self.parameters():
            p.requires_grad = False


class ResBlock(nn.Module):
    """conv - ReLU - conv with an identity skip; the residual is scaled by ``res_scale``."""

    def __init__(self, n_feats: int, res_scale: float = 1.0):
        super().__init__()
        self.body = nn.Sequential(default_conv(n_feats, n_feats), nn.ReLU(True), default_conv(n_feats, n_feats))
        self.res_scale = res_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) * self.res_scale


class Upsampler(nn.Sequential):
    """conv + PixelShuffle stages: log2(scale) x2 stages for powers of two, one x3 stage for scale 3."""

    def __init__(self, scale: int, n_feats: int):
        layers: list[nn.Module] = []
        if scale & (scale - 1) == 0:
            for _ in range(int(math.log2(scale))):
                layers += [default_conv(n_feats, 4 * n_feats), nn.PixelShuffle(2)]
        elif scale == 3:
            layers += [default_conv(n_feats, 9 * n_feats), nn.PixelShuffle(3)]
        else:
            raise ValueError(f"EDSR supports scales 2, 3, 4 and 8, not {scale}")
        super().__init__(*layers)


class EDSR(nn.Module):
    """EDSR / EDSR-baseline. ``forward`` maps RGB (N,3,h,w) in [0, rgb_range] to (N,3,s*h,s*w)."""

    def __init__(self, scale: int = 2, n_resblocks: int = 16, n_feats: int = 64, res_scale: float = 1.0,
                 rgb_range: float = 255.0, skip: str | None = None):
        super().__init__()
        if skip not in (None, "bicubic"):
            raise ValueError(f"unknown skip {skip!r}; use None or 'bicubic'")
        self.scale, self.skip = scale, skip
        self.sub_mean = MeanShift(rgb_range)
        self.head = nn.Sequential(default_conv(3, n_feats))
        self.body = nn.Sequential(*[ResBlock(n_feats, res_scale) for _ in range(n_resblocks)],
                                  default_conv(n_feats, n_feats))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), default_conv(n_feats, 3))
        self.add_mean = MeanShift(rgb_range, sign=1)
        if skip:  # start as plain bicubic: the network only has to learn the residual
            nn.init.zeros_(self.tail[1].weight)
            nn.init.zeros_(self.tail[1].bias)
            self.add_mean.bias.data.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x
        x = self.head(self.sub_mean(x))
        x = self.tail(self.body(x) + x)
        x = self.add_mean(x)
        if self.skip:
            x = x + F.interpolate(inp, scale_factor=self.scale, mode="bicubic", align_corners=False)
        return x
