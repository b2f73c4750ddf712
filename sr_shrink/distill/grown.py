"""Teacher-grown synthetic images (``--synthetic grown-deadleaves,grown-smooth``; any ``grown-<source>``): images
of a synthetic source that the teacher itself upscaled, brought back to the LR size with the antialiased bicubic
(``data.make_lr``'s degradation, without its 8-bit rounding): ``downscale(T(x), scale)``, clamped to [0, 1].

Such an input carries the teacher's own edges and textures (for an anime or GAN-trained teacher, its clean lines
and flat shading), degraded the way real LR inputs are, so the student learns the teacher's mapping on inputs
nearer to what the teacher makes of images than the synthetic source alone. It costs one more teacher forward
per image, at the image's LR size: the labelled pool pays it once per run; fresh images (``--pool 0``) pay it at
every refill. :func:`render_mix` draws a mix of grown and plain sources
(:data:`~sr_shrink.distill.render.SYNTHETIC`) from one seeded generator, exactly as
:func:`~sr_shrink.distill.render.synthetic_mix` draws their plain sources, then grows the grown kinds' shares.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..resize import downscale
from .render import SYNTHETIC, mix_counts, synthetic_mix

GROWN_PREFIX = "grown-"
GROWN = {GROWN_PREFIX + k: k for k in SYNTHETIC}  # teacher-grown kind -> the synthetic source it grows
KINDS = (*SYNTHETIC, *GROWN)  # every name --synthetic takes (besides auto)


def base_kinds(kinds: list[str]) -> list[str]:
    """Return ``kinds`` with each teacher-grown kind replaced by the synthetic source it grows."""
    return [GROWN.get(k, k) for k in kinds]


def grow(x: torch.Tensor, teach: Callable[[torch.Tensor], torch.Tensor], scale: int) -> torch.Tensor:
    """Return the teacher-grown LR images of ``x`` (n, 3, p, p): ``teach(x)`` (the teacher's output, x ``scale``)
    downscaled by ``scale`` with the antialiased bicubic and clamped to [0, 1]."""
    return downscale(teach(x), scale).clamp(0.0, 1.0)


def render_mix(kinds: list[str], n: int, patch: int, g: torch.Generator,
               teach: Callable[[torch.Tensor], torch.Tensor], scale: int,
               device: torch.device | str | None = None) -> torch.Tensor:
    """Return ``n`` LR patches of the ``kinds`` in equal shares, on ``device``: drawn by ``g`` as
    ``synthetic_mix`` draws their base sources (:func:`base_kinds`), then each teacher-grown kind's share grown by
    ``teach`` (:func:`grow`). Without a teacher-grown kind this is ``synthetic_mix`` itself (no teacher forward)."""
    x = synthetic_mix(base_kinds(kinds), n, patch, g)
    x = x.to(device) if device is not None else x
    if not any(k in GROWN for k in kinds):
        return x
    parts, start = [], 0
    for kind, count in zip(kinds, mix_counts(len(kinds), n)):
        part = x[start:start + count]
        parts.append(grow(part, teach, scale) if kind in GROWN and count else part)
        start += count
    return torch.cat(parts)
