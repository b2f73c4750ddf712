"""MATLAB-equivalent bicubic ``imresize`` in torch: differentiable, no rounding, antialiased downscaling.

The kernel is Keys' cubic with a = -0.5 and the sample positions, support widening when downscaling and
symmetric border handling follow MATLAB's ``imresize`` (the convention used to make every SR benchmark's
LR images). Resizing is two matrix products (height, then width), so gradients flow to the input.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch


def cubic(x: torch.Tensor) -> torch.Tensor:
    """Return Keys' cubic kernel (a = -0.5) evaluated at ``x``."""
    ax = x.abs()
    ax2, ax3 = ax**2, ax**3
    inner = (1.5 * ax3 - 2.5 * ax2 + 1) * (ax <= 1)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2))
    return inner + outer


@lru_cache(maxsize=128)
def _weights(in_len: int, out_len: int, scale: float, antialias: bool) -> torch.Tensor:
    """Return the (out_len, in_len) float64 matrix that resizes one axis like MATLAB."""
    kernel_width = 4.0
    if scale < 1 and antialias:
        kernel_width /= scale
    x = torch.arange(1, out_len + 1, dtype=torch.float64)
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centre in input coordinates (1-based)
    left = torch.floor(u - kernel_width / 2)
    taps = int(math.ceil(kernel_width)) + 2
    idx = left.unsqueeze(1) + torch.arange(taps, dtype=torch.float64).unsqueeze(0)  # (out, taps), 1-based
    dist = u.unsqueeze(1) - idx
    if scale < 1 and antialias:
        w = scale * cubic(dist * scale)
    else:
        w = cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    # symmetric (mirror) padding, as MATLAB: index 0 -> 1, -1 -> 2, in_len+1 -> in_len, ...
    i0 = idx.long() - 1
    period = 2 * in_len
    i0 = torch.remainder(i0, period)
    i0 = torch.where(i0 >= in_len, period - 1 - i0, i0)
    mat = torch.zeros(out_len, in_len, dtype=torch.float64)
    mat.scatter_add_(1, i0, w)
    return mat


def imresize(img: torch.Tensor, scale: float | None = None, size: tuple[int, int] | None = None,
             antialias: bool = True) -> torch.Tensor:
    """Resize ``img`` (..., H, W) by ``scale`` or to ``size`` = (h, w) with MATLAB bicubic.

    Returns a tensor of the same dtype and leading dimensions; values are not clamped or rounded.
    """
    if (scale is None) == (size is None):
        raise ValueError("imresize needs exactly one of scale or size")
    h, w = img.shape[-2:]
    if size is None:
        out_h, out_w = int(math.ceil(h * scale)), int(math.ceil(w * scale))
        sh = sw = float(scale)
    else:
        out_h, out_w = size
        sh, sw = out_h / h, out_w / w
    wh = _weights(h, out_h, sh, antialias).to(device=img.device, dtype=img.dtype)
    ww = _weights(w, out_w, sw, antialias).to(device=img.device, dtype=img.dtype)
    out = torch.matmul(wh, img)  # (..., out_h, W)
    return torch.matmul(out, ww.t())


def downscale(hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Return the bicubic-downscaled LR image of ``hr`` (..., H, W), H and W divisible by ``scale``."""
    return imresize(hr, scale=1.0 / scale)


def upscale(lr: torch.Tensor, scale: int) -> torch.Tensor:
    """Return the bicubic-upscaled image of ``lr`` (the 'bicubic' baseline of SR papers)."""
    return imresize(lr, scale=float(scale))
