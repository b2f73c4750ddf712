"""Classic small SR baselines, RGB variants, for comparing against the distilled students.

* ``FSRCNN`` (Dong, Loy, Tang, "Accelerating the Super-Resolution Convolutional Neural Network", ECCV 2016):
  feature extraction (5x5 conv 3->d), shrinking (1x1 d->s), ``m`` 3x3 mapping convs (s->s), expanding
  (1x1 s->d), each followed by a PReLU, then a 9x9 transposed convolution d->3 with stride ``scale``.
* ``ESPCN`` (Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
  Convolutional Neural Network", CVPR 2016): 5x5 conv 3->c1 tanh, 3x3 c1->c2 tanh, 3x3 c2->3*s^2, then
  ``pixel_shuffle``.

Both map RGB (N, 3, h, w) in [0, 1] to (N, 3, s*h, s*w) (exactly ``scale`` times the input, no cropping),
and use only Conv/ConvTranspose, PReLU/Tanh and DepthToSpace, so they export to ONNX as plain graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _check_scale(scale: int) -> int:
    if not isinstance(scale, int) or scale < 2 or scale > 8:
        raise ValueError(f"scale must be an integer between 2 and 8, not {scale!r}")
    return scale


class FSRCNN(nn.Module):
    """FSRCNN(d, s, m) for RGB; ``forward`` maps (N,3,h,w) in [0,1] to (N,3,scale*h,scale*w)."""

    def __init__(self, scale: int = 2, d: int = 56, s: int = 12, m: int = 4):
        super().__init__()
        self.scale, self.d, self.s, self.m = _check_scale(scale), d, s, m
        layers: list[nn.Module] = [nn.Conv2d(3, d, 5, padding=2), nn.PReLU(d),
                                   nn.Conv2d(d, s, 1), nn.PReLU(s)]
        for _ in range(m):
            layers += [nn.Conv2d(s, s, 3, padding=1), nn.PReLU(s)]
        layers += [nn.Conv2d(s, d, 1), nn.PReLU(d)]
        self.body = nn.Sequential(*layers)
        # out = (h - 1) * scale - 2 * 4 + 9 + (scale - 1) = scale * h
        self.deconv = nn.ConvTranspose2d(d, 3, 9, stride=scale, padding=4, output_padding=scale - 1)
        self._init_weights()

    def _init_weights(self) -> None:
        """Initialise convs with He-normal weights and the deconvolution with N(0, 0.001), as in the paper."""
        for mod in self.body:
            if isinstance(mod, nn.Conv2d):
                nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
                nn.init.zeros_(mod.bias)
        nn.init.normal_(self.deconv.weight, 0.0, 1e-3)
        nn.init.zeros_(self.deconv.bias)

    def config(self) -> dict:
        """Return the constructor arguments that rebuild this model."""
        return {"scale": self.scale, "d": self.d, "s": self.s, "m": self.m}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the upscaled RGB batch (N, 3, scale*h, scale*w)."""
        return self.deconv(self.body(x))


class ESPCN(nn.Module):
    """ESPCN for RGB; ``forward`` maps (N,3,h,w) in [0,1] to (N,3,scale*h,scale*w) via a sub-pixel conv."""

    def __init__(self, scale: int = 2, c1: int = 64, c2: int = 32):
        super().__init__()
        self.scale, self.c1, self.c2 = _check_scale(scale), c1, c2
        self.conv1 = nn.Conv2d(3, c1, 5, padding=2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, 3 * scale * scale, 3, padding=1)

    def config(self) -> dict:
        """Return the constructor arguments that rebuild this model."""
        return {"scale": self.scale, "c1": self.c1, "c2": self.c2}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the upscaled RGB batch (N, 3, scale*h, scale*w)."""
        feat = torch.tanh(self.conv2(torch.tanh(self.conv1(x))))
        return F.pixel_shuffle(self.conv3(feat), self.scale)
