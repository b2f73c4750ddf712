"""VDSR (Kim et al., 2016) as used in the DFSR paper: Y channel in, bicubic pre-upsampled, global residual.

``forward`` maps a bicubic-upsampled Y image (N,1,H,W) in [0,1] to the restored Y image (same size).
Keys follow the widely used PyTorch port: ``input``, ``residual_layer.N.conv``, ``output`` (no biases).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class ConvReLU(nn.Module):
    """3x3 conv (no bias) followed by ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x))


class VDSR(nn.Module):
    """20-layer VDSR: input conv + ReLU, ``depth - 2`` conv-ReLU layers, output conv, plus the input."""

    def __init__(self, depth: int = 20, channels: int = 64):
        super().__init__()
        self.input = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.residual_layer = nn.Sequential(*[ConvReLU(channels) for _ in range(depth - 2)])
        self.output = nn.Conv2d(channels, 1, 3, padding=1, bias=False)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0, math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.output(self.residual_layer(self.relu(self.input(x)))) + x
