"""One stage of distillation as a plain function, :func:`train_stage`, and the steps it is made of.

Stage ``idx`` trains ``student`` for ``cfg.steps_per_stage`` steps on L_KD = ||target - S(x)||, with (x, target)
sampled from the replay buffer; the buffer is refilled from the source every ``reuse`` steps (when the source
refills), and a source with a game of its own (the generator) plays one step every ``student_steps_per_g`` student
steps. The learning rate follows :class:`Cosine` (torch's ``LambdaLR``). Every ``save_every`` steps the whole
training state is checkpointed through ``save(step, seconds)``. A caller may shorten a stage while it runs
(``pace``: ``--time-budget`` holds each stage to its share of the budget); the cosine then ends at the new last
step. :class:`Callbacks` let callers (the CLI's progress bar, tests) watch a stage without reaching into it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ..errors import SRShrinkError
from .losses import kd_loss
from .state import TrainState


class Cosine:
    """The factor of the base learning rate at each step: cosine from 1 down to 1 % over ``steps`` (which a
    shortened stage lowers while it runs; steps past it stay at 1 %; 0 steps: a stage that takes none)."""

    def __init__(self, steps: int):
        self.steps = steps

    def __call__(self, step: int) -> float:
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(step, self.steps) / max(1, self.steps)))


def schedule(opt: torch.optim.Optimizer, steps: int, start: int = 0) -> torch.optim.lr_scheduler.LambdaLR:
    """Return the cosine ``LambdaLR`` of ``opt`` over ``steps``, its learning rate already at step ``start``
    (its :class:`Cosine` is ``lr_lambdas[0]``)."""
    for group in opt.param_groups:
        group.setdefault("initial_lr", group["lr"])
    return torch.optim.lr_scheduler.LambdaLR(opt, Cosine(steps), last_epoch=start - 1)


def kd_step(forward: Callable[[torch.Tensor], torch.Tensor], opt: torch.optim.Optimizer, x: torch.Tensor,
            target: torch.Tensor, kind: str = "l1", autocast=None) -> float:
    """Take one optimiser step on the KD loss of ``forward(x)`` against ``target``; return the loss. Raises
    FloatingPointError("student") when the loss is NaN/inf (nothing is stepped then)."""
    if autocast is None:
        out = forward(x).float()
    else:
        with autocast:
            out = forward(x).float()
    loss = kd_loss(out, target, kind)
    if not torch.isfinite(loss):
        raise FloatingPointError("student")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.item()


# A single-process run also writes state.pt when this many seconds have passed since the last one, whatever
# ``save_every`` says: under --time-budget a slow teacher's stage can be shorter than 100 steps (Real-CUGAN: 52),
# and a kill mid-stage then lost the whole stage. Saving is a read of the state: the run is the same either way.
SAVE_EVERY_S = 120.0


@dataclass
class Callbacks:
    """Hooks of a run: ``stage_start(idx, student, state)`` once the stage's student is in place (grown or
    restored; ``state`` is the :class:`~.state.TrainState`, at the step the stage starts from),
    ``stage_end(idx, student)`` with the trained training form before it is evaluated and saved, ``saved(idx,
    step)`` after every state.pt write (step 0 of the next stage at a stage's end), ``step(idx, step, kd,
    parts)`` after every student step (``kd``: the mean of the last 20 losses; ``parts``: the game's last),
    ``label(x)`` for every batch the teacher labels, ``shortened(idx, steps, planned)`` when a stage's steps are
    cut while it runs (``pace``)."""

    stage_start: Callable | None = None
    stage_end: Callable | None = None
    saved: Callable | None = None
    step: Callable | None = None
    label: Callable | None = None
    shortened: Callable | None = None

    def call(self, name: str, *args) -> None:
        """Call hook ``name`` with ``args`` if it is set."""
        hook = getattr(self, name)
        if hook is not None:
            hook(*args)

    def then(self, other: Callbacks) -> Callbacks:
        """Return callbacks that call this object's hooks, then ``other``'s."""
        def both(name):
            a, b = getattr(self, name), getattr(other, name)
            if a is None or b is None:
                return a or b
            return lambda *args: (a(*args), b(*args))[-1]
        return Callbacks(**{n: both(n) for n in ("stage_start", "stage_end", "saved", "step", "label",
                                                  "shortened")})


def refill(state: TrainState) -> None:
    """Add a fresh batch from the source to the replay buffer (timing inputs and teacher separately)."""
    t0, taught = time.perf_counter(), state.label.seconds
    x, t = state.source.refill(state.cfg.batch)
    teacher = state.label.seconds - taught
    state.timing["inputs"] += time.perf_counter() - t0 - teacher
    state.timing["teacher"] += teacher
    state.buffer.add(x, t)


def game_step(state: TrainState, student) -> dict[str, float]:
    """Play one step of the source's game against ``student``; its pair goes to the buffer; return its parts."""
    t0 = time.perf_counter()
    parts, pair = state.source.step(student)
    state.buffer.add(*pair)
    state.timing["generator"] += time.perf_counter() - t0
    return parts


def student_step(state: TrainState, model, opt) -> float:
    """Take one student step on a batch of the buffer; return the KD loss."""
    t0 = time.perf_counter()
    x, target = state.buffer.sample(state.cfg.batch, state.g)
    loss = kd_step(lambda v: model(state.label.fmt(v)), opt, x, target, state.cfg.kd_loss,
                   state.label.student_autocast())
    state.timing["student"] += time.perf_counter() - t0
    return loss


@torch.no_grad()
def buffer_kd(state: TrainState, model, chunk: int = 64) -> float:
    """Return ``model``'s mean KD loss on every pair the replay buffer holds (its latest training batches, in
    order: no random draw), or nan when it holds none."""
    buf = state.buffer
    if not buf.size:
        return float("nan")
    total = 0.0
    for i in range(0, buf.size, chunk):
        x, t = buf.x[i:min(i + chunk, buf.size)], buf.t[i:min(i + chunk, buf.size)]
        out = model(state.label.fmt(x)).float()
        total += kd_loss(out, t, state.cfg.kd_loss).item() * x.shape[0]
    return total / buf.size


def train_stage(state: TrainState, student, save: Callable[[int, float], None], callbacks: Callbacks | None = None,
                world: int = 1, pace: Callable[[int, int], int] | None = None) -> float:
    """Train ``student`` for stage ``state.stage_idx`` from ``state.step`` (0, or where a resumed stage stopped;
    ``state.opt`` then holds the restored optimiser) to ``state.stage_steps`` (None: ``cfg.steps_per_stage``);
    ``save(step, seconds)`` checkpoints every ``save_every`` steps, and in a single process also when
    :data:`SAVE_EVERY_S` seconds have passed since the last checkpoint (a slow teacher's stage can be shorter than
    ``save_every`` steps; a kill should not lose it). ``pace(steps done, total)``, called after every
    step, returns the stage's total steps: fewer than ``total`` shortens the stage (``state.stage_steps``, the
    cosine's end, ``callbacks.shortened``). Return the seconds the stage has taken (a resumed stage's earlier
    seconds included)."""
    cfg, callbacks = state.cfg, callbacks or Callbacks()
    idx, start = state.stage_idx, state.step
    total = state.total_steps
    sched = schedule(state.opt, total, start)
    model = DDP(student) if world > 1 else student
    t_start, before, parts = time.time(), state.seconds, {}  # before: a resumed stage's earlier seconds
    last_save = t_start
    if start == 0 < total:  # a resumed stage goes on with its saved buffer, as the uninterrupted run did
        refill(state)
    step = start
    while step < total:
        try:
            if state.source.plays and step % cfg.student_steps_per_g == 0:
                parts = game_step(state, student)
            if state.source.refills and step % cfg.reuse == 0:
                refill(state)
            kd = student_step(state, model, state.opt)
        except FloatingPointError as exc:
            raise SRShrinkError(
                f"stage {idx + 1} step {step}: the {exc} loss became NaN/inf; stopped. The last good checkpoint "
                f"is kept in {state.where} (state.pt); resume with a lower --lr or --g-lr.") from None
        if pace is not None and (cut := pace(step + 1, total)) < total:  # before the schedule's next step
            callbacks.call("shortened", idx, cut, total)
            total = state.stage_steps = sched.lr_lambdas[0].steps = cut
        sched.step()
        state.kd_hist.append(kd)
        if state.first_kd is None and len(state.kd_hist) >= min(10, total):
            state.first_kd = sum(state.kd_hist) / len(state.kd_hist)
        state.step = step = step + 1
        recent = state.kd_hist[-20:]
        callbacks.call("step", idx, step - 1, sum(recent) / len(recent), parts)
        # by time too in one process only: with several, every rank must reach the (gathering) save together
        due = step % cfg.save_every == 0 or (world == 1 and time.time() - last_save >= SAVE_EVERY_S)
        if due and step < total:
            save(step, before + time.time() - t_start)
            last_save = time.time()
    return before + time.time() - t_start
