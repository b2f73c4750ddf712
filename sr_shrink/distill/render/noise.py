"""Noise renderers: LR patches (n, 3, p, p) in [0, 1] drawn by a seeded ``torch.Generator``.

* ``uniform_noise``: U(0, 1) per pixel (the paper's "noise" baseline).
* ``pink_noise``: 1/f-amplitude (natural power spectrum) colour noise.
* ``smooth_fields``: 1/f^2 colour fields, smooth large-scale shading and colour gradients (what the data-free
  students missed most against photo-trained ones, BENCHMARKS.md section 14).
"""

from __future__ import annotations

import torch


def _rand(shape, g: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=g)


def uniform_noise(n: int, patch: int, g: torch.Generator) -> torch.Tensor:
    """Return ``n`` patches of i.i.d. uniform noise in [0, 1]."""
    return _rand((n, 3, patch, patch), g)


def pink_noise(n: int, patch: int, g: torch.Generator, alpha: float = 1.0) -> torch.Tensor:
    """Return ``n`` colour patches whose amplitude spectrum falls as 1/f^alpha, scaled into [0, 1]."""
    fy = torch.fft.fftfreq(patch).view(-1, 1)
    fx = torch.fft.rfftfreq(patch).view(1, -1)
    f = torch.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0 / patch
    amp = f.pow(-alpha)
    white = torch.randn((n, 3, patch, patch), generator=g)
    field = torch.fft.irfft2(torch.fft.rfft2(white) * amp, s=(patch, patch))
    # correlate the channels like natural colour: a shared luminance field plus weaker chroma
    lum = field[:, :1]
    field = lum + 0.35 * (field - field.mean(dim=1, keepdim=True))
    field = field - field.mean(dim=(2, 3), keepdim=True)
    field = field / field.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
    contrast = 0.05 + 0.2 * _rand((n, 1, 1, 1), g)
    mean = 0.2 + 0.6 * _rand((n, 3, 1, 1), g)
    return (mean + contrast * field).clamp(0, 1)


def smooth_fields(n: int, patch: int, g: torch.Generator) -> torch.Tensor:
    """Return ``n`` smooth colour patches: ``pink_noise`` with a 1/f^2 amplitude spectrum (large-scale gradients)."""
    return pink_noise(n, patch, g, alpha=2.0)
