"""``--time-budget``: the plan of a run's whole wall time, phase by phase, from measured seconds.

The budget counts from the process start (the CLI; in the Python API, the call of ``distill()``) to the last
file written. The phases, in order:

* ``startup``: imports, the teacher file, the eval images (measured when the plan starts);
* ``forward_probe``: two timed teacher forwards on one batch (every setup estimate starts from the second) and
  one on a crop of an eval image (the eval references' cost per pixel: small patches cost more per pixel);
* ``eval_references``: the teacher on the eval images (estimated from the crop, then measured); when all of them
  would take more than ``EVAL_SHARE`` of the budget, the run scores the first ones that fit (at least one);
* ``pool``: labelling the pool, which gets ``POOL_SHARE`` of the time left after the estimated fixed costs;
* ``step_probe``: real steps of the first and last stage's students and one stage evaluation;
* ``stage_N``: its steps, its evaluation and its writes; the steps are planned from the probe, then re-planned
  before every later stage from the pace the finished stages kept (a machine that got busier slows every step).
  Within a stage, :class:`StageDeadline` holds its steps to the stage's share of the budget: when the pace of its
  last seconds would end them after that share, the stage is cut to the steps that fit (its cosine schedule ends
  there), so one stage on a machine that got busier cannot take the time of the stages after it;
* ``final``: run.json after the last stage.

A budget that cannot hold the setup and one step per stage is refused before the long setup starts, with the
minimum. Everything here is plain arithmetic on seconds measured elsewhere (:mod:`.probe` times the teacher and
the steps, :mod:`.run` times the phases), so tests can feed it numbers; run.json records every phase's planned
and spent seconds under ``time_budget.phases``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import SRShrinkError

POOL_SHARE = 0.1  # the pool's share of the time left once the fixed costs are set aside
EVAL_SHARE = 0.15  # the most of the budget the teacher's pass over the eval images may take
SAFETY = 0.95  # the share of the time left for steps that the plan fills (timer noise, a busier machine)
WRITE_S = 2.0  # a stage's writes (stage_XX.pt, generator.pt, state.pt, run.json) until one is measured
FINAL_S = 1.0  # after the last stage: the last run.json, state.pt removed
PROBE_WARMUP = 2  # untimed steps before the probe's timed ones
PROBE_STEPS = 8  # timed student steps per probed student size
PROBE_GAME_WARMUP = 1  # untimed generator steps (a big teacher's forward and backward make each one dear)
PROBE_GAME_STEPS = 1  # timed generator steps (on the first stage's student; the last's reuses their time)
# a budgeted stage compares its pace with its deadline after every step in one process, and every CHECK_STEPS
# steps in a distributed run (each check broadcasts rank 0's figure)
CHECK_STEPS = 10
PACE_WINDOW_S = 5.0  # ... measured over at least this many seconds of its latest steps
MIN_CUT = 0.1  # ... and is cut only when its steps at that pace would end this share of its planned time late


@dataclass
class Setup:
    """What the first estimate of a run starts from: ``forward`` (seconds of one warm teacher forward on a batch
    of ``batch_pixels`` LR pixels), the LR pixels of the eval images, the stages, whether the source plays the
    generator game (a teacher forward and backward every ``steps_per_g`` student steps), ``reuse``, whether
    a pool is labelled, ``student_share`` (the last student's parameters over the teacher's, at most 1) and
    ``eval_pixel_seconds`` (the teacher's seconds per LR pixel on a crop of an eval image; None: the batch's)."""

    forward: float
    batch_pixels: int
    eval_pixels: int
    stages: int
    game: bool
    reuse: int
    steps_per_g: int
    pool: bool
    student_share: float
    eval_pixel_seconds: float | None = None

    def eval_references(self) -> float:
        """Return the estimated seconds of the teacher's pass over the eval images."""
        per_pixel = self.forward / self.batch_pixels  # small patches cost no less per pixel than whole images
        if self.eval_pixel_seconds is not None:  # the crop's one forward (a new shape) may be slow once
            per_pixel = min(per_pixel, self.eval_pixel_seconds)
        return self.eval_pixels * per_pixel

    def game_step(self) -> float:
        """Return the estimated seconds of one generator step (0 without the game)."""
        return 3 * self.forward if self.game else 0.0

    def step(self) -> float:
        """Return the estimated seconds of one student step (its share of refills and generator steps)."""
        refill = 0.0 if self.pool else self.forward / self.reuse  # pool crops need no teacher
        return refill + self.game_step() / self.steps_per_g

    def pool_minimum(self) -> float:
        """Return the estimated seconds of the pool's first chunk (a batch of images of 4 patches' area)."""
        return 4 * self.forward if self.pool else 0.0

    def step_probe(self) -> float:
        """Return the estimated seconds of the step probe: the generator steps (warm-up included, once: the
        teacher's forward and backward dominate them), the student steps of two sizes, one stage evaluation."""
        n = max(PROBE_STEPS, 2 * self.reuse)
        refill = 0.0 if self.pool else self.forward / self.reuse
        return ((PROBE_GAME_WARMUP + PROBE_GAME_STEPS) * self.game_step() + 2 * (PROBE_WARMUP + n) * refill
                + self.stage_eval())

    def stage_eval(self) -> float:
        """Return the estimated seconds of one stage's evaluation (on the eval images and the fidelity pairs)."""
        return 2 * self.eval_references() * min(1.0, self.student_share)

    def fixed_after_pool(self) -> float:
        """Return the estimated seconds the run needs after the pool besides the steps: the probe, every
        stage's evaluation and writes, the final write."""
        return self.step_probe() + self.stages * (self.stage_eval() + WRITE_S) + FINAL_S


def eval_images_that_fit(pixels: list[int], setup: Setup, budget_s: float, share: float = EVAL_SHARE) -> int:
    """Return how many of the eval images (LR ``pixels`` each, in order) the teacher's pass may take within
    ``share`` of the budget, at the setup's cost per pixel: all when they fit, else the first that do (at least
    one; 0 without eval images)."""
    per_pixel = setup.eval_references() / max(1, setup.eval_pixels)
    total, n = 0.0, 0
    for p in pixels:
        total += p * per_pixel
        if total > share * budget_s:
            break
        n += 1
    return max(n, min(1, len(pixels)))


def minimum_seconds(setup: Setup, spent: float) -> float:
    """Return the least wall time (seconds) a run of ``setup`` needs when ``spent`` seconds are gone: the eval
    references, the pool's first chunk, the probe, one step per stage with its evaluation and writes, the final
    write."""
    return (spent + setup.eval_references() + setup.pool_minimum() + setup.fixed_after_pool()
            + setup.stages * setup.step())


def refuse_if_short(minutes: float, setup: Setup, spent: float) -> float:
    """Return :func:`minimum_seconds`; raise an SRShrinkError naming it (in minutes) when ``minutes`` is less."""
    need = minimum_seconds(setup, spent)
    if minutes * 60 < need:
        shown = math.ceil(need / 60 * 100) / 100
        raise SRShrinkError(f"--time-budget {minutes:g}: one teacher forward on a batch takes {setup.forward:.2f} s "
                            f"here; {spent:.0f} s are gone already and the eval references, pool, step probe and one "
                            f"step per stage need about {need - spent:.0f} s more; give at least {shown:.2f} minutes "
                            "(or fewer stages, a smaller --batch or --lr-patch, --eval none).")
    return need


def pool_seconds(budget_s: float, spent: float, setup: Setup) -> float:
    """Return the seconds the pool may take: ``POOL_SHARE`` of what is left once ``spent`` and the fixed costs
    after the pool (:meth:`Setup.fixed_after_pool`) are set aside (0: the pool's first chunk only)."""
    return max(0.0, POOL_SHARE * (budget_s - spent - setup.fixed_after_pool()))


def steps_that_fit(left: float, step_costs: list[float], overheads: list[float], final: float = FINAL_S,
                   safety: float = SAFETY) -> int:
    """Return the steps per stage (the same for each of the stages) that fit in ``left`` seconds: ``step_costs``
    and ``overheads`` (evaluation and writes) per stage, ``final`` after the last; below 1 when none fits."""
    return math.floor((left - sum(overheads) - final) * safety / sum(step_costs))


def pace(stage_seconds: float, steps: int, planned_step: float) -> float:
    """Return how much slower (> 1) or faster than planned a finished stage's steps ran: its measured seconds
    per step over the ``planned_step`` seconds."""
    return stage_seconds / max(1, steps) / planned_step if planned_step > 0 else 1.0


@dataclass
class Plan:
    """The budget's plan (run.json's ``time_budget`` record): the probe's figures (``setup_seconds`` before the
    first step, ``step_seconds`` per stage's blocks, ``eval_seconds_per_stage``), the first plan's
    ``steps_per_stage`` and ``planned_seconds``, then ``stage_steps`` (the steps each stage got, re-planned
    between stages) and ``phases`` (name -> [planned seconds or None, spent seconds or None])."""

    minutes: float
    setup_seconds: float
    step_seconds: dict
    eval_seconds_per_stage: float
    steps_per_stage: int
    planned_seconds: float
    stage_steps: list = field(default_factory=list)
    phases: dict = field(default_factory=dict)
    spent_seconds: float | None = None
    eval_images: int | None = None  # set when the budget scored only the first eval images
    pace: float = 1.0  # the finished stages' seconds per step over the probe's (set by :func:`replan`)

    def planned(self, name: str, seconds: float | None) -> None:
        """Set phase ``name``'s planned seconds."""
        self.phases.setdefault(name, [None, None])[0] = seconds

    def spent(self, name: str, seconds: float) -> None:
        """Set phase ``name``'s spent seconds."""
        self.phases.setdefault(name, [None, None])[1] = seconds

    def deadline(self, idx: int, start: float, step: int = 0) -> StageDeadline:
        """Return the deadline of stage ``idx`` (0-based) starting at ``start`` (a ``time.time()``) with ``step``
        steps done: its planned steps at the planned pace, plus the slack the plan left (``SAFETY``)."""
        cost = list(self.step_seconds.values())[idx] * self.pace
        return StageDeadline(start + (self.stage_steps[idx] - step) * cost / SAFETY, (start, step))

    def to_dict(self) -> dict:
        """Return the run.json record (the keys of the first plans, ``phases`` as ``{planned, spent}``)."""
        r2 = (lambda v: None if v is None else round(v, 2))  # noqa: E731
        d = {"minutes": self.minutes, "setup_seconds": round(self.setup_seconds, 2),
             "step_seconds": {str(b): round(c, 4) for b, c in self.step_seconds.items()},
             "eval_seconds_per_stage": round(self.eval_seconds_per_stage, 2),
             "steps_per_stage": self.steps_per_stage, "planned_seconds": round(self.planned_seconds, 1),
             "stage_steps": list(self.stage_steps),
             "phases": {k: {"planned": r2(p), "spent": r2(s)} for k, (p, s) in self.phases.items()}}
        if self.spent_seconds is not None:
            d["spent_seconds"] = round(self.spent_seconds, 1)
        if self.eval_images is not None:
            d["eval_images"] = self.eval_images
        return d


def first_plan(minutes: float, spent: float, step_costs: dict, eval_s: float, stages: int,
               setup_phases: dict | None = None) -> Plan:
    """Return the plan once the probe has run (``spent`` seconds gone, ``step_costs`` per stage's blocks,
    ``eval_s`` for one stage's evaluation; ``setup_phases``: name -> [planned, spent] of the phases before it);
    an SRShrinkError with the minimum when not one step per stage fits."""
    costs = list(step_costs.values())
    overheads = [eval_s + WRITE_S] * stages
    steps = steps_that_fit(minutes * 60 - spent, costs, overheads)
    if steps < 1:
        need = (spent + sum(overheads) + FINAL_S + sum(costs) * 10) / 60
        raise SRShrinkError(f"--time-budget {minutes:g}: setting up took {spent:.0f} s and a step of all "
                            f"{stages} stages takes {sum(costs):.2f} s; give at least {need:.1f} minutes "
                            "(or fewer stages).")
    plan = Plan(minutes, spent, dict(step_costs), eval_s, steps,
                spent + sum(overheads) + steps * sum(costs) + FINAL_S, [steps] * stages,
                {k: list(v) for k, v in (setup_phases or {}).items()})
    for i, (c, o) in enumerate(zip(costs, overheads)):
        plan.planned(f"stage_{i + 1}", steps * c + o)
    plan.planned("final", FINAL_S)
    return plan


def replan(plan: Plan, done: int, spent: float, train_seconds: float, overhead: float) -> int:
    """Return the steps for each stage after the ``done`` finished ones, from the time left after ``spent``, the
    pace of the last finished stage (``train_seconds`` for its steps) and ``overhead`` (its evaluation and
    writes, the most the next stages are given); records them in ``plan``. 0 when the budget is spent: the later
    stages are then written as grown, untrained (growth keeps the output, so each scores as the stage before it;
    one step at the start of the cosine, Adam's largest, took a SPAN x2 student grown from a 37.43 dB stage to
    30.30 dB)."""
    costs = list(plan.step_seconds.values())
    factor = pace(train_seconds, plan.stage_steps[done - 1], costs[done - 1])
    plan.pace = factor
    rest = [c * factor for c in costs[done:]]
    overheads = [max(overhead, plan.eval_seconds_per_stage + WRITE_S)] * len(rest)
    steps = max(0, steps_that_fit(plan.minutes * 60 - spent, rest, overheads))
    for i, (c, o) in enumerate(zip(rest, overheads), start=done):
        plan.stage_steps[i] = steps
        plan.planned(f"stage_{i + 1}", steps * c + o)
    return steps


@dataclass
class StageDeadline:
    """The wall time ``end`` (a ``time.time()``) by which a budgeted stage's steps should be done, and ``mark``:
    the (time, steps done) the pace window of its latest steps starts at (the stage's start, at first); ``span``,
    the stage's planned seconds, is ``end`` less the first mark's time."""

    end: float
    mark: tuple[float, int]
    span: float = field(init=False)

    def __post_init__(self) -> None:
        self.span = self.end - self.mark[0]

    def steps(self, step: int, total: int, now: float, window: float = PACE_WINDOW_S,
              min_cut: float = MIN_CUT) -> int:
        """Return the stage's total steps once ``step`` of ``total`` are done at time ``now``: ``total`` while
        the pace of the steps since the mark (at least ``window`` seconds of them) ends them by ``end``, or
        would end them less than ``min_cut`` of the stage's planned seconds (``span``) after it (a small overrun
        is left to the re-plan of the next stages, and timer noise cuts nothing), else the steps that fit (never
        fewer than ``step``). The overrun is judged in seconds at the latest pace, so a stage whose last steps
        slow down many times over is cut too (in steps, its last tenth would have run whatever it cost)."""
        t0, s0 = self.mark
        if now - t0 < window or step <= s0:
            return total
        self.mark = (now, step)
        per_step = (now - t0) / (step - s0)
        fit = step + math.floor(max(0.0, self.end - now) / per_step)
        return max(step, fit) if (total - fit) * per_step >= min_cut * self.span else total
