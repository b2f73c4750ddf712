"""The input-source protocol of distillation: where a stage's (LR input, target) pairs come from.

A source fills the replay buffer: ``refill(n)`` returns ``n`` (inputs, targets) pairs, LR patches (n, 3, p, p) in
[0, 1] and their targets (teacher-labelled through :class:`~.label.Labeller`, or ground truth). A source that plays
a game of its own (the data-free generator) does it in ``step(student)``, called every ``student_steps_per_g``
student steps; it returns its loss parts and a labelled pair for the buffer. ``refills`` says whether the stage
refills the buffer every ``reuse`` steps (the generator-only mode feeds it from its game alone).
``state_dict`` / ``load_state_dict`` hold what a bit-exact resume needs; ``prepare()`` does one-off setup (the
labelled pool) and returns what run.json records about it. ``generator`` is the EMA generator saved as
generator.pt (None without one). Constraints on the config: ``patch_multiple`` (LR patch side), ``min_batch``.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

Pair = tuple[torch.Tensor, torch.Tensor]


class Source(Protocol):
    """What ``train_stage`` needs from an input source (module docstring)."""

    patch_multiple: int
    min_batch: int
    refills: bool
    plays: bool  # has a step() of its own
    generator: nn.Module | None

    def prepare(self, seconds: float | None = None) -> dict | None:
        """Do one-off setup (the pool: within ``seconds`` if given, a time budget's share); return its run.json
        record (or None)."""

    def refill(self, n: int) -> Pair:
        """Return ``n`` fresh (inputs, targets) pairs."""

    def step(self, student: nn.Module) -> tuple[dict[str, float], Pair]:
        """Play one step of the source's own game; return (loss parts, a labelled pair for the buffer)."""

    def state_dict(self) -> dict:
        """Return the source's resumable state (tensors and counters)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned."""


class Plain:
    """Defaults for a source without a game or state of its own."""

    patch_multiple, min_batch, refills, plays, generator = 1, 1, True, False, None

    def prepare(self, seconds: float | None = None) -> dict | None:
        """Return None: nothing to set up."""
        return None

    def step(self, student: nn.Module):
        """Sources without a game have no step."""
        raise NotImplementedError

    def state_dict(self) -> dict:
        """Return {}: the source holds no state beyond the run's random generator."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore."""
