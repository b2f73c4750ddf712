"""The default data-free source (``--mode datafree``): each batch is a share ``mix`` of synthetic images (the
``--synthetic`` kinds in equal parts: crops of the labelled pool, or fresh images) and the rest samples of the
generator G, whose game runs alongside. Without a game (``sample`` alone: a trained generator, as QAT uses
it), the G share comes from that generator and nothing trains it. At ``mix`` 1 there is no G share, no game and
no generator (``make_source``): every input is a crop of the labelled pool (or a fresh synthetic image)."""

from __future__ import annotations

import torch
from torch import nn

from ..grown import render_mix
from .base import Pair
from .generator import GamePlayer, GeneratorGame
from .label import Labeller
from .synthetic import SyntheticPool


class MixedSource(GamePlayer):
    """Synthetic ``kinds`` (share ``mix``) plus generator samples; see the module docstring."""

    def __init__(self, kinds: list[str], mix: float, patch: int, g: torch.Generator, label: Labeller,
                 game: GeneratorGame | None = None, pool: SyntheticPool | None = None,
                 sampler: nn.Module | None = None):
        self.kinds, self.mix, self.patch, self.g, self.label = kinds, mix, patch, g, label
        self.game, self.pool = game, pool
        self.sampler = sampler if sampler is not None else (game.ema if game is not None else None)
        self.plays = game is not None

    def synthetic_count(self, n: int) -> int:
        """Return how many of a batch of ``n`` inputs are synthetic images (the rest come from G)."""
        return int(round(n * self.mix))

    def prepare(self, seconds: float | None = None) -> dict | None:
        """Build the pool (if any, within ``seconds`` if given); return its run.json record."""
        return self.pool.prepare(seconds) if self.pool is not None else None

    def _samples(self, n: int) -> torch.Tensor:
        if self.game is not None:
            return self.game.sample(n)
        size = {"size": self.patch} if getattr(self.sampler, "any_size", False) else {}
        return self.sampler.sample(n, self.g, **size)

    def refill(self, n: int) -> Pair:
        """Return ``n`` labelled pairs: the synthetic share first, then G's."""
        dev, k = self.label.device, self.synthetic_count(n)
        pool = self.pool.pool if self.pool is not None else None
        if pool is not None:  # synthetic share: crops of the labelled pool (no teacher forward); G's share: fresh
            xs, ts = pool.crops(k, self.patch, self.g)
            if n - k == 0:
                return xs.to(dev), ts.to(dev)
            x = self._samples(n - k)
            return torch.cat([xs.to(dev), x]), torch.cat([ts.to(dev), self.label(x)])
        x = render_mix(self.kinds, k, self.patch, self.g, self.label, self.label.scale, dev)
        if n - k:
            x = torch.cat([x, self._samples(n - k)])
        return x, self.label(x)

    @property
    def generator(self) -> nn.Module | None:
        """Return the EMA generator of the game (None without one)."""
        return self.game.ema if self.game is not None else None

    def state_dict(self) -> dict:
        """Return the game's state ({} without one)."""
        return self.game.state_dict() if self.game is not None else {}

    def load_state_dict(self, state: dict) -> None:
        """Restore the game's state (if any)."""
        if self.game is not None:
            self.game.load_state_dict(state)
