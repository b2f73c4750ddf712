"""``--time-budget``'s measurements: a timed teacher forward and the step probe.

The step probe runs real steps (generator steps, refills and student steps, as a stage runs them) on copies of
the first and last stage's students, between :meth:`TrainState.snapshot` and :meth:`TrainState.restore`, so the
run then starts as it would have without them. What the figures mean for the plan is :mod:`.budget`'s.
"""

from __future__ import annotations

import copy
import time

import torch

from ..evaluate import evaluate_with_fidelity, teacher_pixels
from ..models.student import SRStudent, collapse, grow
from ..progress import task
from .budget import PROBE_GAME_STEPS, PROBE_GAME_WARMUP, PROBE_STEPS, PROBE_WARMUP, Setup
from .env import rank0
from .state import TrainState
from .train import game_step, refill, student_step

EVAL_CROP = 48  # side of the crop of an eval image timed for the eval references' estimate


def timed_forward(cfg, label, eval_pairs) -> tuple[float, float | None]:
    """Return (the seconds of one teacher forward on a batch of uniform noise, the second of two: the first pays
    one-off kernel setup; the seconds per LR pixel of one forward on a crop of the first eval image, None without
    eval images). Its own inputs: the run's random draws are untouched."""
    x = torch.rand((cfg.batch, 3, cfg.lr_patch, cfg.lr_patch), generator=torch.Generator().manual_seed(0))
    x = x.to(label.device)
    label(x)
    t0 = time.perf_counter()
    label(x)
    forward = time.perf_counter() - t0
    if not eval_pairs:
        return forward, None
    lr = eval_pairs[0].lr
    crop = lr[None, :, :EVAL_CROP, :EVAL_CROP].to(label.device)
    t0 = time.perf_counter()
    with torch.no_grad():
        label.teacher(crop)
    return forward, (time.perf_counter() - t0) / (crop.shape[-1] * crop.shape[-2])


def setup_of(cfg, forward: tuple[float, float | None], eval_pairs, game: bool, teacher_params: int | None) -> Setup:
    """Return the :class:`~.budget.Setup` of a run of ``cfg`` from what :func:`timed_forward` measured."""
    blocks = cfg.stages()
    with torch.random.fork_rng(devices=[]):  # the run's draws are untouched
        student = sum(p.numel() for p in SRStudent(cfg.scale, blocks[-1], cfg.channels, "plain").parameters())
    share = student / teacher_params if teacher_params else 1.0
    eval_pixels = sum(teacher_pixels(tuple(p.lr.shape[-2:])) for p in eval_pairs)  # tiles of large images included
    return Setup(forward[0], cfg.batch * cfg.lr_patch**2, eval_pixels, len(blocks), game, cfg.reuse,
                 cfg.student_steps_per_g, cfg.pool > 0, share, forward[1])


def probe_cost(state: TrainState, student, g_seconds: list[float] | None = None) -> tuple[float, list[float]]:
    """Return (the measured seconds per student step of ``student``, refills and generator steps included at
    their rates; the generator steps' seconds, played here unless ``g_seconds`` gives them); runs a few real
    steps, so call it between a snapshot and a restore of ``state``."""
    cfg, source = state.cfg, state.source
    opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
    if g_seconds is None:
        g_seconds = []
        for i in range(PROBE_GAME_WARMUP + PROBE_GAME_STEPS if source.plays else 0):  # generator steps alone
            t0 = time.perf_counter()
            game_step(state, student)
            if i >= PROBE_GAME_WARMUP:
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
    return cost, g_seconds


def probe_steps(state: TrainState, student, blocks: list[int], eval_pairs, fidelity_pairs, world: int = 1,
                main: bool = True) -> tuple[dict, float]:
    """Return ({blocks: seconds per step} for every stage, seconds of one stage's evaluation), measured on the
    first and last stage's students (the ones between interpolated by their blocks; rank 0's figures on every
    rank); leaves ``state`` as it found it."""
    cfg = state.cfg
    snap = state.snapshot()
    try:
        sizes = sorted({blocks[0], blocks[-1]})
        counts = f"{' and '.join(map(str, sizes))} block{'s' * (sizes != [1])}"
        with task(f"timing the student's steps at {counts}", total=len(sizes), unit="sizes") as advance:
            first = copy.deepcopy(student)
            cost0, g_seconds = probe_cost(state, first)
            cost = {blocks[0]: cost0}
            advance()
            last = first
            while last.n_blocks < blocks[-1]:
                last = grow(last, state.g).to(state.label.device)
            if blocks[-1] != blocks[0]:
                cost[blocks[-1]] = probe_cost(state, last, g_seconds)[0]
                advance()
            eval_s = 0.0
            if eval_pairs and main:
                t0 = time.perf_counter()
                shipped = collapse(last) if last.block == "rep" else last
                evaluate_with_fidelity(shipped, eval_pairs, fidelity_pairs, cfg.scale)
                eval_s = time.perf_counter() - t0
    finally:
        state.restore(snap)
    b0, b1 = blocks[0], blocks[-1]
    cost[b1] = max(cost[b1], cost[b0])  # a bigger student is not cheaper (timer noise aside)
    per_stage = {b: cost[b0] if b1 == b0 else cost[b0] + (cost[b1] - cost[b0]) * (b - b0) / (b1 - b0)
                 for b in blocks}
    return rank0((per_stage, eval_s), world)
