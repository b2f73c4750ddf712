"""A pool of synthetic LR images labelled by the teacher once and shared by every stage of a run.

Without it, every refill of the replay buffer renders fresh synthetic images and pays a teacher forward for
them, stage after stage. With it, ``n`` synthetic images of twice the LR patch side are rendered and labelled
once, when the run starts; refills then cut aligned (input, target) patches out of them at random positions
and orientations, so K stages pay the synthetic share of the teacher's cost about once (the generator's share
stays fresh: its samples change as it trains). The crops' targets are the teacher's output on the whole
image, so near a crop's border they carry context the crop does not show, as crops of real photos do.

The pool is rebuilt from its own random generator (seeded by the run's seed and rank) whenever a run starts
or resumes, so it never needs to be stored and a resumed run sees the same pool. Under ``--time-budget`` its size
is what fits in a share of the budget (measured on its first chunk, rank 0's figure for every rank); run.json
records it and a resumed run rebuilds that many images.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch

from ..progress import task
from .env import rank0
from .grown import render_mix

MAX_POOL_BYTES = 512 * 2**20  # the pool's images and targets together stay below this


@dataclass
class PoolPlan:
    """How big a pool a run gets: ``images`` of ``side`` px (LR), ``side * scale`` px targets."""

    images: int
    side: int
    scale: int

    def bytes(self) -> int:
        """Return the memory the pool's float32 images and targets take."""
        return self.images * 3 * 4 * (self.side**2 + (self.side * self.scale) ** 2)

    def to_dict(self) -> dict:
        """Return the plan as a JSON-ready dict (what run.json records under ``pool``)."""
        return {"images": self.images, "side": self.side, "mbytes": round(self.bytes() / 2**20, 1)}


def plan_pool(requested: int, lr_patch: int, scale: int, synthetic_labels: int | None) -> PoolPlan | None:
    """Return the pool a run gets, or None when ``requested`` is 0.

    ``synthetic_labels`` is how many synthetic LR patches one stage would label without a pool (None: unknown,
    e.g. under a time budget); the pool is capped so that labelling it costs no more teacher time than that
    (each pool image has four patches' area): a K-stage run pays the synthetic share about once instead of K
    times. It is also capped to fit in ``MAX_POOL_BYTES``.
    """
    if requested <= 0:
        return None
    side = 2 * lr_patch
    images = requested
    if synthetic_labels is not None:
        images = min(images, max(1, math.ceil(synthetic_labels / 4)))
    per_image = PoolPlan(1, side, scale).bytes()
    images = max(1, min(images, MAX_POOL_BYTES // per_image))
    return PoolPlan(images, side, scale)


class LabelledPool:
    """Synthetic LR images with their teacher outputs; :meth:`crops` cuts aligned training pairs from them."""

    def __init__(self, x: torch.Tensor, t: torch.Tensor, scale: int):
        self.x, self.t, self.scale = x, t, scale

    @classmethod
    def build(cls, plan: PoolPlan, kinds: list[str], label, g: torch.Generator, batch: int,
              device: torch.device | str = "cpu", seconds: float | None = None) -> LabelledPool:
        """Return a pool of ``plan.images`` images drawn from the synthetic ``kinds`` in equal shares (by
        ``g``; teacher-grown kinds grown by ``label``, :mod:`.grown`), labelled by ``label(x) -> teacher output``
        in chunks of ``batch`` images.

        ``seconds`` (a time budget's share for the pool): the first chunk is timed and the pool stops at the images
        that fit in ``seconds`` at that rate (at least the first chunk); the pool then equals the pool of a plan of
        that many images, so a resumed run rebuilds it from its recorded size."""
        xs, ts = [], []
        images, start, t0 = plan.images, 0, time.perf_counter()
        what = (f"labelling the pool (up to {plan.images} images, as many as fit its share of the time)"
                if seconds is not None else f"labelling the pool ({plan.images} images)")
        with task(what, total=None if seconds is not None else images, unit="images") as advance:
            while start < images:
                x = render_mix(kinds, min(batch, images - start), plan.side, g, label, plan.scale, device)
                xs.append(x)
                ts.append(label(x))
                start += x.shape[0]
                advance(x.shape[0])
                if seconds is not None and len(xs) == 1:
                    per_image = (time.perf_counter() - t0) / start
                    images = rank0(max(start, min(images, int(seconds / max(per_image, 1e-9)))))
        return cls(torch.cat(xs), torch.cat(ts), plan.scale)

    def __len__(self) -> int:
        return self.x.shape[0]

    def crops(self, n: int, patch: int, g: torch.Generator, with_targets: bool = True):
        """Return ``n`` random aligned (LR patch, target patch) pairs, each turned by a random dihedral
        transform, as two tensors (only the LR patches when ``with_targets`` is False)."""
        s, side = self.scale, self.x.shape[-1]
        if n == 0:  # e.g. a batch of 1 in datafree mode: its one input comes from the generator
            x = self.x.new_empty((0, 3, patch, patch))
            return (x, self.t.new_empty((0, 3, patch * s, patch * s))) if with_targets else x
        idx = torch.randint(len(self), (n,), generator=g)
        off = torch.randint(side - patch + 1, (n, 2), generator=g)
        turn = torch.randint(8, (n,), generator=g)
        xs, ts = [], []
        for i, (a, b), d in zip(idx.tolist(), off.tolist(), turn.tolist()):
            xs.append(_dihedral(self.x[i, :, a:a + patch, b:b + patch], d))
            if with_targets:
                ts.append(_dihedral(self.t[i, :, a * s:(a + patch) * s, b * s:(b + patch) * s], d))
        x = torch.stack(xs)
        return (x, torch.stack(ts)) if with_targets else x


def _dihedral(img: torch.Tensor, d: int) -> torch.Tensor:
    """Return ``img`` (C, H, W) under the d-th of the 8 flips/quarter turns (0: unchanged)."""
    img = torch.rot90(img, d % 4, dims=(1, 2)) if d % 4 else img
    return img.flip(-1) if d >= 4 else img
