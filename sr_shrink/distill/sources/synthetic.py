"""Synthetic images as the student's input source (``--mode noise|pink|deadleaves|texleaves``), and the labelled
pool every source with a synthetic share cuts its crops from (``distill.pool``; ``--pool 0``: fresh images, labelled
for every refill)."""

from __future__ import annotations

import math
import time

import torch

from ..grown import render_mix
from ..pool import LabelledPool, PoolPlan, plan_pool
from .base import Pair, Plain
from .label import Labeller

POOL_SEED = 7_000_003  # offset of the pool's own random generator from the run's (seed * 1000 + rank)


class SyntheticPool:
    """Builds and holds the shared labelled pool of a run's synthetic ``kinds`` (None without one)."""

    def __init__(self, kinds: list[str], requested: int, lr_patch: int, scale: int, labels: int | None,
                 label: Labeller, seed: int, batch: int, device: torch.device):
        self.kinds, self.requested, self.lr_patch, self.scale, self.labels = kinds, requested, lr_patch, scale, labels
        self.label, self.seed, self.batch, self.device = label, seed, batch, device
        self.pool: LabelledPool | None = None

    def prepare(self, seconds: float | None = None) -> dict | None:
        """Render and label the pool from its own seeded generator (within ``seconds`` when a time budget gives
        the pool a share); return run.json's ``pool`` record (None when the run has no pool)."""
        plan = plan_pool(self.requested, self.lr_patch, self.scale, self.labels) if self.kinds else None
        if plan is None:
            return None
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(self.seed + POOL_SEED)
        self.pool = LabelledPool.build(plan, self.kinds, self.label, g, self.batch, self.device, seconds)
        built = PoolPlan(len(self.pool), plan.side, plan.scale)
        return {**built.to_dict(), "seconds": round(time.perf_counter() - t0, 2)}


def pool_labels(steps: int, reuse: int, share: int, budgeted: bool) -> int | None:
    """Return how many synthetic patches one stage labels without a pool (the pool's cap; None under a budget,
    where the steps are not known yet)."""
    return None if budgeted else (math.ceil(steps / reuse) + 1) * share


class SyntheticSource(Plain):
    """Synthetic ``kinds`` in equal shares: crops of the labelled pool, or fresh images labelled per refill."""

    def __init__(self, kinds: list[str], patch: int, g: torch.Generator, label: Labeller, pool: SyntheticPool):
        self.kinds, self.patch, self.g, self.label, self.pool = kinds, patch, g, label, pool

    def prepare(self, seconds: float | None = None) -> dict | None:
        """Build the pool (within ``seconds`` if given); return its run.json record."""
        return self.pool.prepare(seconds)

    def refill(self, n: int) -> Pair:
        """Return ``n`` labelled synthetic pairs."""
        dev = self.label.device
        if self.pool.pool is not None:
            x, t = self.pool.pool.crops(n, self.patch, self.g)
            return x.to(dev), t.to(dev)
        x = render_mix(self.kinds, n, self.patch, self.g, self.label, self.label.scale, dev)
        return x, self.label(x)
