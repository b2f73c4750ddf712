"""Synthetic LR images for data-free distillation, by name: ``SYNTHETIC`` is the one registry.

Every renderer is ``f(n, patch, g) -> (n, 3, patch, patch)`` in [0, 1], drawing only from the seeded
``torch.Generator`` ``g``. Adding a source is one module here (its renderer) plus one line in ``SYNTHETIC``;
``--mode NAME`` (for the modes in ``distill.config.MODES``) and ``--synthetic NAME,...`` then find it.
"""

from __future__ import annotations

import torch

from .leaves import dead_leaves, texture_bank, textured_leaves
from .noise import pink_noise, smooth_fields, uniform_noise

SYNTHETIC = {"noise": uniform_noise, "pink": pink_noise, "smooth": smooth_fields, "deadleaves": dead_leaves,
             "texleaves": textured_leaves}

__all__ = ["SYNTHETIC", "dead_leaves", "mix_counts", "pink_noise", "smooth_fields", "synthetic", "synthetic_mix",
           "texture_bank", "textured_leaves", "uniform_noise"]


def synthetic(kind: str, n: int, patch: int, g: torch.Generator) -> torch.Tensor:
    """Return ``n`` patches from the named synthetic source (a key of ``SYNTHETIC``)."""
    return SYNTHETIC[kind](n, patch, g)


def mix_counts(k: int, n: int) -> list[int]:
    """Return how many of ``n`` images each of ``k`` kinds gets in a mix: equal parts, the first kinds taking the
    remainder."""
    return [n // k + (i < n % k) for i in range(k)]


def synthetic_mix(kinds: list[str], n: int, patch: int, g: torch.Generator) -> torch.Tensor:
    """Return ``n`` patches shared out among the synthetic ``kinds`` in equal parts (:func:`mix_counts`), drawn
    kind after kind by ``g``; an empty (0, 3, patch, patch) batch when ``n`` is 0."""
    counts = mix_counts(len(kinds), n)
    parts = [synthetic(kind, c, patch, g) for kind, c in zip(kinds, counts) if c]
    return torch.cat(parts) if parts else torch.empty((0, 3, patch, patch))
