"""PSNR and SSIM on the Y channel, as the SR literature reports them (BasicSR / EDSR conventions).

Inputs are RGB tensors in [0, 1], shaped (3, H, W) or (N, 3, H, W). Y is BT.601 luma in [16, 235]:
Y = 16 + (65.481 R + 128.553 G + 24.966 B) with R, G, B in [0, 1]. ``crop_border`` pixels (the scale,
by convention) are removed from every side before comparing.
"""

from __future__ import annotations

import math

import torch


def rgb_to_y(img: torch.Tensor) -> torch.Tensor:
    """Return BT.601 luma in [16, 235] of an RGB image in [0, 1], keeping a channel dim of size 1."""
    r, g, b = img[..., 0:1, :, :], img[..., 1:2, :, :], img[..., 2:3, :, :]
    return 16.0 + 65.481 * r + 128.553 * g + 24.966 * b


def quantize(img: torch.Tensor) -> torch.Tensor:
    """Return ``img`` clamped to [0, 1] and rounded to 8-bit levels, as a saved PNG would be."""
    return img.clamp(0, 1).mul(255).round().div(255)


def _prepare(img: torch.Tensor, crop_border: int) -> torch.Tensor:
    if img.dim() == 3:
        img = img.unsqueeze(0)
    if img.dim() != 4 or img.shape[1] != 3:
        raise ValueError(f"expected RGB images shaped (N,3,H,W) or (3,H,W), got {tuple(img.shape)}")
    y = rgb_to_y(img.double())
    if crop_border > 0:
        y = y[..., crop_border:-crop_border, crop_border:-crop_border]
    return y


def psnr_y(img: torch.Tensor, ref: torch.Tensor, crop_border: int = 0) -> float:
    """Return the Y-channel PSNR in dB (peak 255) between ``img`` and ``ref``, averaged over the batch."""
    if img.shape != ref.shape:
        raise ValueError(f"image shapes differ: {tuple(img.shape)} vs {tuple(ref.shape)}")
    a, b = _prepare(img, crop_border), _prepare(ref, crop_border)
    mse = ((a - b) ** 2).mean(dim=(1, 2, 3))
    vals = [float("inf") if m == 0 else 10.0 * math.log10(255.0**2 / float(m)) for m in mse]
    return sum(vals) / len(vals)


def _gaussian_1d(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Return the normalised 1-D Gaussian taps (float64); their outer product is the 2-D SSIM window."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    return g / g.sum()


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Return the (1, 1, size, size) 2-D Gaussian window (the reference the separable filter must match)."""
    g = _gaussian_1d(size, sigma)
    return torch.outer(g, g).view(1, 1, size, size)


def _blur(maps: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
    """Return the valid 2-D Gaussian filtering of ``maps`` (..., H, W): a column pass, then a row pass.

    The 11x11 window is the outer product of ``taps``, so two 11-tap passes give the result of one 121-tap
    convolution up to float64 rounding (~1e-16). Each pass is a weighted sum of shifted views, which on a CPU
    is several times faster than ``conv2d`` with a one-channel float64 kernel."""
    k = taps.numel()
    weights = [float(t) for t in taps]
    for dim in (-2, -1):
        n = maps.shape[dim] - k + 1
        if n < 1:
            raise ValueError(f"image of {tuple(maps.shape[-2:])} is smaller than the {k}x{k} SSIM window")
        out = maps.narrow(dim, 0, n) * weights[0]
        for i in range(1, k):
            out.add_(maps.narrow(dim, i, n), alpha=weights[i])
        maps = out
    return maps


def ssim_y(img: torch.Tensor, ref: torch.Tensor, crop_border: int = 0) -> float:
    """Return the Y-channel SSIM (11x11 Gaussian, sigma 1.5, K1=0.01, K2=0.03, valid filtering)."""
    if img.shape != ref.shape:
        raise ValueError(f"image shapes differ: {tuple(img.shape)} vs {tuple(ref.shape)}")
    a, b = _prepare(img, crop_border), _prepare(ref, crop_border)
    n = a.shape[0]
    taps = _gaussian_1d().to(a.device)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    # one batched pass over the five maps the formula needs: a, b, a^2, b^2, ab
    mu_a, mu_b, e_aa, e_bb, e_ab = _blur(torch.cat([a, b, a * a, b * b, a * b]), taps).split(n)
    var_a = e_aa - mu_a**2
    var_b = e_bb - mu_b**2
    cov = e_ab - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())
