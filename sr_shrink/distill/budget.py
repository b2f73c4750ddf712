"""``--time-budget``: measure what a step costs, then plan ``steps_per_stage`` so the whole run fits.

The probe runs real steps (generator steps, refills and student steps, as a stage runs them) on copies of the
first and last stage's students, between :meth:`TrainState.snapshot` and :meth:`TrainState.restore`, so the run
then starts as it would have without them; the plan (the same steps for every stage) is recorded in run.json
under ``time_budget``.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import SRShrinkError
from ..evaluate import evaluate_model
from ..models.student import collapse, grow
from .state import TrainState
from .train import game_step, refill, student_step

PROBE_WARMUP = 2  # untimed steps before the probe's timed ones
PROBE_STEPS = 8  # timed student steps per probed student size


@dataclass
class Plan:
    """What the probe measured and the steps per stage it set (run.json's ``time_budget`` record)."""

    minutes: float
    setup_seconds: float
    step_seconds: dict
    eval_seconds_per_stage: float
    steps_per_stage: int
    planned_seconds: float

    def to_dict(self) -> dict:
        """Return the run.json record."""
        return {"minutes": self.minutes, "setup_seconds": round(self.setup_seconds, 2),
                "step_seconds": {str(b): round(c, 4) for b, c in self.step_seconds.items()},
                "eval_seconds_per_stage": round(self.eval_seconds_per_stage, 2),
                "steps_per_stage": self.steps_per_stage, "planned_seconds": round(self.planned_seconds, 1)}


def minimum_minutes(cfg, label, eval_pairs, elapsed: float, game: bool) -> tuple[float, float]:
    """Return (a lower estimate of the minutes the run needs, the seconds of one teacher forward), from one
    timed teacher forward on a batch of uniform noise (its own random generator: the run's draws are untouched):
    the time already spent, the eval references (teacher forwards over the eval images' pixels), the pool's first
    chunk (4 batches' area), the step probe and one step per stage."""
    x = torch.rand((cfg.batch, 3, cfg.lr_patch, cfg.lr_patch), generator=torch.Generator().manual_seed(0))
    t0 = time.perf_counter()
    label(x.to(label.device))
    forward = time.perf_counter() - t0
    batch_pixels = cfg.batch * cfg.lr_patch**2
    refs = sum(p.lr.shape[-1] * p.lr.shape[-2] for p in eval_pairs) / batch_pixels * forward
    game_step = 3 * forward if game else 0.0  # forward and backward through the teacher
    probe = 2 * (2 * PROBE_WARMUP * game_step + (PROBE_WARMUP + PROBE_STEPS) / cfg.reuse * forward)
    stages = len(cfg.stages()) * (forward + game_step)
    return (elapsed + refs + 4 * forward + probe + stages) / 60, forward


def refuse_early(cfg, label, eval_pairs, started: float, game: bool, world: int = 1, main: bool = True) -> None:
    """Raise an SRShrinkError with the minimum at once (before any setup) when ``cfg.time_budget`` cannot hold
    :func:`minimum_minutes` (rank 0's estimate on every rank)."""
    box = [minimum_minutes(cfg, label, eval_pairs, time.time() - started, game) if main else None]
    if world > 1:
        dist.broadcast_object_list(box, src=0)
    need, forward = box[0]
    if cfg.time_budget < need:
        raise SRShrinkError(f"--time-budget {cfg.time_budget:g}: one teacher forward on a batch takes {forward:.2f} s "
                            f"here, and setting up (eval references, pool, step probe) plus one step per stage needs "
                            f"about {need:.2f} minutes; give at least {need:.2f} minutes (or fewer stages, a smaller "
                            "--batch or --lr-patch).")


def probe_cost(state: TrainState, student) -> float:
    """Return the measured seconds per student step of ``student`` (refills and generator steps included at
    their rates); runs a few real steps, so call it between a snapshot and a restore of ``state``."""
    cfg, source = state.cfg, state.source
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    g_seconds = []
    for i in range(PROBE_WARMUP + 2 if source.plays else 0):  # generator steps, timed on their own
        t0 = time.perf_counter()
        game_step(state, student)
        if i >= PROBE_WARMUP:
            g_seconds.append(time.perf_counter() - t0)
    n = max(PROBE_STEPS, 2 * cfg.reuse)
    for i in range(PROBE_WARMUP + n):  # student steps with their refills, as the stage's loop runs them
        if i == PROBE_WARMUP:
            t0 = time.perf_counter()
        if source.refills and i % cfg.reuse == 0:
            refill(state)
        student_step(state, student, opt)
    cost = (time.perf_counter() - t0) / n
    if g_seconds:
        cost += sum(g_seconds) / len(g_seconds) / cfg.student_steps_per_g
    return cost


def plan_time_budget(state: TrainState, student, blocks: list[int], started: float, eval_pairs, fidelity_pairs,
                     world: int = 1, main: bool = True) -> Plan:
    """Measure the step cost of the first and last stage's students and return the plan that fits the run into
    ``cfg.time_budget`` minutes counted from ``started``; an SRShrinkError with the minimum when nothing fits."""
    cfg = state.cfg
    snap = state.snapshot()
    try:
        first = copy.deepcopy(student)
        cost = {blocks[0]: probe_cost(state, first)}
        last = first
        while last.n_blocks < blocks[-1]:
            last = grow(last, state.g).to(state.label.device)
        if blocks[-1] != blocks[0]:
            cost[blocks[-1]] = probe_cost(state, last)
        eval_s = 0.0
        if eval_pairs and main:
            t0 = time.perf_counter()
            shipped = collapse(last) if last.block == "rep" else last
            evaluate_model(shipped, eval_pairs, cfg.scale)
            evaluate_model(shipped, fidelity_pairs, cfg.scale)
            eval_s = time.perf_counter() - t0
    finally:
        state.restore(snap)
    b0, b1 = blocks[0], blocks[-1]
    cost[b1] = max(cost[b1], cost[b0])  # a bigger student is not cheaper (timer noise aside)
    per_stage = [cost[b0] if b1 == b0 else cost[b0] + (cost[b1] - cost[b0]) * (b - b0) / (b1 - b0)
                 for b in blocks]
    setup = time.time() - started
    left = cfg.time_budget * 60 - setup - eval_s * len(blocks)
    # 20 % and 5 s: checkpoints (state.pt with the replay buffer, fsync'd), growth, the stage's first refill,
    # writing run.json; a 2-minute budget on a quiet machine still overran by 6 % with 10 % and no fixed part
    steps = int((left - 5.0) * 0.8 / sum(per_stage))
    if world > 1:  # every rank trains the same number of steps: rank 0's plan
        box = [steps]
        dist.broadcast_object_list(box, src=0)
        steps = box[0]
    if steps < 1:
        need = (setup + eval_s * len(blocks) + sum(per_stage) * 10) / 60
        raise SRShrinkError(f"--time-budget {cfg.time_budget:g}: setting up took {setup:.0f} s and a step of all "
                            f"{len(blocks)} stages takes {sum(per_stage):.2f} s; give at least {need:.1f} minutes "
                            "(or fewer stages).")
    return Plan(cfg.time_budget, setup, dict(zip(blocks, per_stage)), eval_s, steps,
                setup + eval_s * len(blocks) + steps * sum(per_stage))
