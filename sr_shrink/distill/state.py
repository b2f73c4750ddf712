"""The mutable state of a distillation, listed once: :class:`TrainState`.

The same lists serve the checkpoint (``state.pt``, written every ``save_every`` steps and at each stage's end),
the resume that reads it back, and the ``--time-budget`` probe, which takes a snapshot, runs real steps and puts
everything back. Each rank holds its own random generators and replay buffer (``local``); the rest (the source's
game, the stage's progress, the finished stages, the timing) is ``shared`` and saved by rank 0.

Resume is bit-exact on the CPU: a run killed at any point and resumed writes the same stage checkpoints as one
that never stopped.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist

from ..errors import SRShrinkError, first_line
from ..io import atomic_torch_save, load_problem
from ..record import StageRecord
from .buffer import ReplayBuffer
from .sources import Labeller, Source

STATE_VERSION = 2
TIMING = ("teacher", "student", "generator", "inputs", "pool")


@dataclass
class TrainState:
    """Every piece of mutable training state (module docstring): the run's random generator ``g``, the replay
    ``buffer``, the ``source`` (its game), the stage in progress (``stage_idx``, ``step``, ``seconds``,
    ``kd_hist``, ``first_kd``, ``opt``, and ``stage_steps`` when ``--time-budget`` shortened it), the records
    of the finished ``stages`` and the ``timing``."""

    cfg: object
    g: torch.Generator
    buffer: ReplayBuffer
    source: Source
    label: Labeller
    where: Path
    stages: list[StageRecord] = field(default_factory=list)
    stage_idx: int = 0
    step: int = 0
    seconds: float = 0.0
    kd_hist: list = field(default_factory=list)
    first_kd: float | None = None
    opt: torch.optim.Optimizer | None = None
    stage_steps: int | None = None  # the stage's steps when it was shortened while it ran (None: the config's)
    timing: dict = field(default_factory=lambda: dict.fromkeys(TIMING, 0.0))

    @property
    def total_steps(self) -> int:
        """Return the steps of the stage in progress: ``stage_steps`` when it was shortened, else the config's."""
        return self.stage_steps or self.cfg.steps_per_stage

    # ---- the lists
    def local(self) -> dict:
        """Return this rank's share: its random generators and replay buffer (CPU copies)."""
        return {"rng": self.g.get_state(), "torch_rng": torch.get_rng_state(), "buffer": self.buffer.state_dict()}

    def shared(self) -> dict:
        """Return the state every rank has alike: the stage's progress, the finished stages, the timing and the
        source's game (references: copy before changing anything)."""
        return {"stage_idx": self.stage_idx, "step": self.step, "seconds": self.seconds,
                "kd_hist": self.kd_hist[-50:], "first_kd": self.first_kd, "stage_steps": self.stage_steps,
                "stages": [s.to_dict() for s in self.stages],
                "timing": self.timing, "opt": None if self.opt is None else self.opt.state_dict(),
                **self.source.state_dict()}

    def load_local(self, mine: dict) -> None:
        """Restore what :meth:`local` returned."""
        self.g.set_state(mine["rng"].cpu())
        torch.set_rng_state(mine["torch_rng"].cpu())
        self.buffer = ReplayBuffer(self.buffer.capacity)
        if mine["buffer"]["x"] is not None:
            self.buffer.load_state_dict(mine["buffer"], self.label.device)

    def load_shared(self, state: dict) -> None:
        """Restore what :meth:`shared` returned (the optimiser is restored by whoever builds the stage's)."""
        self.stage_idx, self.step, self.seconds = state["stage_idx"], state["step"], state["seconds"]
        self.kd_hist, self.first_kd = list(state["kd_hist"]), state.get("first_kd")
        self.stage_steps = state.get("stage_steps")
        self.stages[:] = [StageRecord.from_dict(s) for s in state["stages"]]  # the list run.json's record holds
        self.timing = {**self.timing, **state.get("timing", {})}
        self.source.load_state_dict(state)

    # ---- the probe
    def snapshot(self) -> dict:
        """Return a deep copy of everything (what a probe may change)."""
        return copy.deepcopy({"local": self.local(), "shared": self.shared()})

    def restore(self, snap: dict) -> None:
        """Put back what :meth:`snapshot` returned, so the run goes on as if nothing had run in between."""
        self.load_local(snap["local"])
        self.load_shared(snap["shared"])

    # ---- the checkpoint
    def save(self, path: Path, student, world: int = 1, main: bool = True) -> None:
        """Atomically write state.pt with ``student`` (every rank must call it: the ranks' own states are
        gathered to rank 0, which writes)."""
        ranks = [self.local()]
        if world > 1:
            ranks = [None] * world if main else None
            dist.gather_object(self.local(), ranks, dst=0)
        if not main:
            return
        state = {"version": STATE_VERSION, **self.shared(), "student": student.state_dict(),
                 "student_config": student.config(), "ranks": ranks,
                 "timing": dict(self.timing)}
        atomic_torch_save(state, path)

    def load(self, path: Path, rank: int = 0, world: int = 1,
             unreadable: Callable[[str], None] | None = None) -> dict | None:
        """Restore the state saved at ``path`` (this rank's generators and buffer, the game, the progress);
        return the saved dict (for the student and optimiser), or None when there is none.

        A file whose bytes are not a checkpoint (truncated, overwritten) is an SRShrinkError; with ``unreadable``
        given, that is called with the reason instead and None is returned (nothing is restored: the run goes on as
        if there were no state.pt). A file the OS cannot read is an SRShrinkError either way."""
        if not path.exists():
            return None
        try:
            state = torch.load(path, map_location=self.label.device, weights_only=True)
        except OSError as exc:  # permissions, I/O: the bytes may be fine, so nothing is given up on
            raise SRShrinkError(f"{path}: cannot read the saved state ({first_line(exc)}); make it readable and "
                                "rerun with --resume.") from None
        except Exception as exc:
            if unreadable is None:
                raise SRShrinkError(f"{path}: cannot read the saved state ({load_problem(exc)}); delete it to resume "
                                    "from the finished stage files.") from None
            unreadable(load_problem(exc))
            return None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise SRShrinkError(f"{path}: saved by another sr-shrink version (state format "
                                f"{state.get('version', 1) if isinstance(state, dict) else '?'}, this one reads "
                                f"{STATE_VERSION}); finish the run with that version or rerun with --force.")
        ranks = state["ranks"]
        if len(ranks) != world:
            raise SRShrinkError(f"{path.parent}: this run was started with {len(ranks)} process(es), not "
                                f"{world}; resume it with the same number (torchrun --nproc_per_node).")
        self.source.load_state_dict(state)
        self.load_local(ranks[rank])
        self.timing.update(state.get("timing", {}))
        return state
