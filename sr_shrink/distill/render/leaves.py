"""Dead-leaves renderers: LR patches (n, 3, p, p) in [0, 1] drawn by a seeded ``torch.Generator``.

* ``dead_leaves``: occluding discs with a power-law size distribution, flat or shaded colours, rendered at
  2x and downscaled with the antialiased bicubic, which gives natural edge and scale statistics.
* ``textured_leaves``: dead leaves whose discs carry textures (1/f^alpha fills of varied roughness and
  oriented gratings), for the fine texture that flat leaves lack.
"""

from __future__ import annotations

import math

import torch

from ...resize import downscale
from .noise import _rand, pink_noise


def _standardize(field: torch.Tensor) -> torch.Tensor:
    """Return each (n, k) map of ``field`` shifted to zero mean and scaled to unit std."""
    field = field - field.mean(dim=(2, 3), keepdim=True)
    return field / field.std(dim=(2, 3), keepdim=True).clamp_min(1e-6)


def texture_bank(n: int, k: int, size: int, g: torch.Generator, grating: float = 0.3) -> torch.Tensor:
    """Return ``k`` zero-mean, unit-std luminance textures per image, (n, k, size, size): random-phase fields
    with a 1/f^alpha amplitude spectrum (alpha uniform in [0.5, 2], rough to smooth), or with probability
    ``grating`` an oriented sinusoidal grating (2 to size/4 cycles) modulated by a smooth field."""
    fy = torch.fft.fftfreq(size).view(-1, 1)
    fx = torch.fft.rfftfreq(size).view(1, -1)
    f = torch.sqrt(fx**2 + fy**2)
    f[0, 0] = 1.0 / size
    alpha = 0.5 + 1.5 * _rand((n, k, 1, 1), g)
    white = torch.randn((n, k, size, size), generator=g)
    field = torch.fft.irfft2(torch.fft.rfft2(white) * f.pow(-alpha), s=(size, size))
    yy, xx = torch.meshgrid(torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32),
                            indexing="ij")
    theta = math.pi * _rand((n, k, 1, 1), g)
    cycles = 2 + (size / 4 - 2) * _rand((n, k, 1, 1), g) ** 2
    phase = 2 * math.pi * _rand((n, k, 1, 1), g)
    wave = torch.sin(2 * math.pi * cycles / size * (xx * theta.cos() + yy * theta.sin()) + phase)
    use_grating = _rand((n, k, 1, 1), g) < grating
    field = torch.where(use_grating, wave * (1 + 0.3 * _standardize(field)), field)
    return _standardize(field)


def dead_leaves(n: int, patch: int, g: torch.Generator, n_discs: int = 160, r_min: float = 0.03,
                r_max: float = 0.8, shading: float = 0.5, texture: float = 0.5, render: int = 2,
                leaf_texture: float = 0.0, n_textures: int = 8, max_contrast: float = 0.25) -> torch.Tensor:
    """Return ``n`` dead-leaves patches: discs with p(r) ~ r^-3 painted back to front, downscaled from 2x.

    Radii are relative to the patch side; ``shading`` is the chance a disc carries a linear gradient and
    ``texture`` the chance an image gets a faint 1/f texture on top. Colours are a luminance plus a
    moderate chroma, as in natural scenes. ``leaf_texture`` is the chance a disc is filled with one of
    ``n_textures`` per-image textures (``texture_bank``) at a contrast up to ``max_contrast``; at 0 no
    extra random numbers are drawn, so the flat-leaves images are unchanged.
    """
    size = patch * render
    lin = torch.linspace(0, 1, size)
    yy, xx = lin.view(1, size, 1), lin.view(1, 1, size)  # the pixel grid, broadcast instead of materialised
    # inverse-CDF sampling of p(r) ~ r^-3 on [r_min, r_max]
    u = _rand((n, n_discs), g)
    a, b = r_min**-2, r_max**-2
    radii = (a - u * (a - b)).pow(-0.5)
    centres = _rand((n, n_discs, 2), g) * 1.2 - 0.1
    lum = _rand((n, n_discs, 1), g)
    colours = lum + (_rand((n, n_discs, 3), g) - 0.5) * 0.6 * _rand((n, n_discs, 1), g)
    grads = (_rand((n, n_discs, 2), g) - 0.5) * 1.0 * (_rand((n, n_discs, 1), g) < shading)
    img = _rand((n, 3, 1, 1), g).expand(n, 3, size, size).clone()
    if leaf_texture > 0:
        bank = texture_bank(n, n_textures, size, g)
        pick = torch.randint(0, n_textures, (n, n_discs), generator=g)
        contrast = max_contrast * _rand((n, n_discs), g) * (_rand((n, n_discs), g) < leaf_texture)
    # Painting back to front leaves each pixel the colour of the last disc that covers it, so find that disc
    # first (one add, compare and fill per disc) and work out the colours once, from that disc's parameters,
    # with the same float operations as painting disc by disc: the result is bit-identical to it.
    dy2 = (yy - centres[:, :, 0].view(n, n_discs, 1, 1)) ** 2  # (n, K, size, 1)
    dx2 = (xx - centres[:, :, 1].view(n, n_discs, 1, 1)) ** 2  # (n, K, 1, size)
    r2 = radii.view(n, n_discs, 1, 1) ** 2
    top = torch.full((n, size, size), -1, dtype=torch.int16 if n_discs < 2**15 else torch.int64)
    for k in range(n_discs):
        top.masked_fill_(dy2[:, k] + dx2[:, k] < r2[:, k], k)
    covered = (top >= 0).unsqueeze(1)
    idx = top.clamp_min(0).view(n, -1).long()

    def at_top(values: torch.Tensor) -> torch.Tensor:  # (n, K) per-disc values -> (n, size, size) per pixel
        return values.gather(1, idx).view(n, size, size)

    cy, cx = at_top(centres[:, :, 0]), at_top(centres[:, :, 1])
    shade = at_top(grads[:, :, 0]) * (yy - cy) + at_top(grads[:, :, 1]) * (xx - cx)
    if leaf_texture > 0:
        fill = bank.gather(1, at_top(pick).unsqueeze(1))[:, 0]
        shade = shade + at_top(contrast) * fill
    col = torch.stack([at_top(colours[:, :, c]) for c in range(3)], dim=1)
    img = torch.where(covered, (col + shade.unsqueeze(1)).clamp(0, 1), img)
    img = downscale(img, render)
    textured = (_rand((n, 1, 1, 1), g) < texture).float()
    img = img + textured * 0.5 * (pink_noise(n, patch, g) - 0.5) * _rand((n, 1, 1, 1), g)
    return img.clamp(0, 1)


def textured_leaves(n: int, patch: int, g: torch.Generator) -> torch.Tensor:
    """Return ``n`` dead-leaves patches whose discs mostly (80 %) carry textures; see ``dead_leaves``."""
    return dead_leaves(n, patch, g, leaf_texture=0.8)
