"""Data-free progressive distillation: ``distill(teacher_path, run_dir, cfg)`` -> run.json dict.

The parts (each its own module): ``config`` (DistillConfig), ``sources`` (where the inputs come from, one
protocol, one module per family, ``make_source``), ``render`` (the synthetic images), ``train`` (``train_stage``
and its steps), ``state`` (the mutable state, listed once), ``budget`` (``--time-budget``), ``resume`` (the run
folder before the first step) and ``run`` (``run_stages``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..data import load_eval_set
from ..errors import OtherRankError, SRShrinkError
from ..evaluate import PERCEPTUAL_MARGIN_DB, under_bicubic
from ..progress import Lines, stderr_console, stdout_console
from ..run import RunDir
from ..teachers import load_teacher
from .answers import answer_warning, far_answers
from .config import AUTO_SYNTHETIC, MODES, DistillConfig
from .env import Env, init_distributed, leave_group, rank0, resolve_device
from .perceptual import PERCEPTUAL_SOURCES
from .resume import nothing_to_resume, prepare_run_dir
from .run import Job, eval_folder, run_stages
from .sources import FAMILIES, check_data, synthetic_kinds
from .train import Callbacks

__all__ = ["Callbacks", "DistillConfig", "MODES", "distill", "summary_table", "teacher_params"]


def distill(teacher_path: str | None, run_dir: str | Path, cfg: DistillConfig, eval_dir: str | None = None,
            resume: bool = False, force: bool = False, device: str = "auto", trust_pickle: bool = False,
            teacher_scale: int | None = None, quiet: bool = False, amp: bool = False,
            channels_last: bool = False, eval_images: int | None = None, value_range: float | None = None,
            res_scale: float | None = None, callbacks: Callbacks | None = None, started: float | None = None,
            log: Callable[[str], None] | None = None) -> dict:
    """Run a progressive distillation of ``teacher_path`` into ``run_dir``; return the run.json dict.

    ``eval_dir`` (default: the bundled eval split; "none" to skip) gives each stage's Y-PSNR/SSIM and its
    fidelity to the teacher; ``value_range`` / ``res_scale`` override what is inferred from the teacher file.
    With ``cfg.time_budget`` (minutes) the budget counts from ``started`` (a ``time.time()``; default: this call;
    the CLI passes its process's start). ``callbacks`` watch the run (:class:`~.train.Callbacks`); ``log`` gets its
    one-line notes (a resume with nothing to resume, a stage file a resume found unreadable and trains again).
    """
    started = time.time() if started is None else started
    cfg.validate()
    if resume and force:  # --resume continues what --force would delete: a resume refusal's "--force" tip was moot
        raise SRShrinkError("pass --resume (continue the run in --out) or --force (start it over), not both.")
    run_dir = Path(run_dir)
    dev = resolve_device(device)
    teacher = load_teacher(teacher_path, scale=teacher_scale or None, trust_pickle=trust_pickle,
                           value_range=value_range, res_scale=res_scale)
    if teacher_scale is None and cfg.scale != teacher.scale:
        cfg = cfg.with_scale(teacher.scale)
    if cfg.scale != teacher.scale:
        raise SRShrinkError(f"the teacher upscales x{teacher.scale}, not x{cfg.scale}; pass --scale {teacher.scale}.")
    cfg = fit_patch(cfg, teacher)
    check_data(cfg)  # a bad --data fails before the run folder is made
    rank, world, dev = init_distributed(dev)
    env = Env(dev, rank, world, quiet or rank != 0, amp, channels_last)
    if not env.quiet:
        auto = cfg.synthetic == AUTO_SYNTHETIC  # not resolved yet: check every source auto may pick
        kinds = synthetic_kinds(replace(cfg, synthetic=PERCEPTUAL_SOURCES) if auto else cfg)
        answers = far_answers(teacher, kinds, cfg.lr_patch, cfg.seed) if kinds else {}
        for warning in (padded_patch_warning(cfg, teacher), answer_warning(answers, cfg.mode)):
            if warning:
                stderr_console().print(warning, style="yellow", markup=False, highlight=False, soft_wrap=True)
    log = log or (lambda _message: None)
    if resume and env.main and nothing_to_resume(run_dir):  # after the checks: a refused run gets no note
        log(f"note: {run_dir} holds nothing to resume (no run.json, stage_XX.pt or state.pt); starting a new run.")
    with contextlib.ExitStack() as held:
        refused = None
        if env.main:  # the folder stays locked for this process until the run ends
            try:
                held.enter_context(prepare_run_dir(run_dir, resume, force))
            except SRShrinkError as exc:
                refused = str(exc)
        refused = rank0(refused, env.world)  # every rank stops on it (the others died at the barrier, traceback)
        if refused is not None:
            leave_group()
            raise SRShrinkError(refused) if env.main else OtherRankError(refused)
        env.barrier()
        pairs = [] if eval_dir == "none" else load_eval_set(cfg.scale, eval_dir, eval_images)
        callbacks = callbacks or Callbacks()
        job = Job(teacher, cfg.validate(), RunDir.create(run_dir), pairs, env, started, callbacks, log,
                  eval_folder(eval_dir))
        if env.quiet:
            return run_stages(job, resume)
        console = stderr_console()
        if not console.is_terminal:  # piped or logged: plain lines, so the log shows the stages as they go
            job.callbacks = callbacks.then(line_callbacks(console))
            run = run_stages(job, resume)
        else:
            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("kd {task.fields[kd]:.4f} {task.fields[g]}"), TimeElapsedColumn(),
                       TimeRemainingColumn()]
            with Progress(*columns, console=console) as progress:
                job.callbacks = callbacks.then(progress_callbacks(progress))
                run = run_stages(job, resume)
    stdout_console().print(summary_table(run))
    return run


SHORTENED = "its steps run slower than the plan, and --time-budget keeps each stage to its share of the time"


def progress_callbacks(progress: Progress) -> Callbacks:
    """Return callbacks that show each stage as a rich progress bar (steps, recent KD loss, the game's parts)."""
    tasks: dict[int, int] = {}

    def start(idx, student, state):
        tasks[idx] = progress.add_task(f"stage {idx + 1} ({student.n_blocks} blk)", total=state.cfg.steps_per_stage,
                                       completed=state.step, kd=float("nan"), g="")

    def step(idx, _step, kd, parts):
        progress.update(tasks[idx], advance=1, kd=kd, g=" ".join(f"{k}={v:.3g}" for k, v in parts.items()))

    def shortened(idx, steps, planned):
        progress.console.print(f"stage {idx + 1}: {steps} steps instead of {planned}: {SHORTENED}", markup=False,
                               highlight=False, soft_wrap=True)
        progress.update(tasks[idx], total=steps)

    return Callbacks(stage_start=start, step=step, shortened=shortened)


def line_callbacks(console: Console) -> Callbacks:
    """Return callbacks that report each stage as plain lines (for output that is not a terminal): when it starts,
    every few seconds its step count, time and recent KD loss (:class:`~sr_shrink.progress.Lines`), and when it
    ends."""
    open_: dict[int, Lines] = {}

    def start(idx, student, state):
        open_[idx] = Lines(console, f"stage {idx + 1} ({student.n_blocks} blk)", state.cfg.steps_per_stage,
                           state.step, unit="steps")

    def step(idx, _step, kd, parts):
        open_[idx].advance(1, f"kd {kd:.4f}")

    def end(idx, student):
        if idx in open_:
            open_.pop(idx).close()

    def shortened(idx, steps, _planned):
        open_[idx].set_total(steps, SHORTENED)

    return Callbacks(stage_start=start, step=step, stage_end=end, shortened=shortened)


def fit_patch(cfg: DistillConfig, teacher) -> DistillConfig:
    """Return ``cfg`` with an automatic LR patch size raised to one the teacher takes without padding (e.g. a
    multiple of a Swin teacher's window), kept a multiple of what the mode's source needs (4 for the generator)."""
    if not cfg.lr_patch_auto:
        return cfg
    patch, multiple = teacher.fit_size(cfg.lr_patch), FAMILIES[cfg.mode].patch_multiple
    while patch % multiple:
        patch = teacher.fit_size(patch + 1)
    return replace(cfg, lr_patch=patch) if patch != cfg.lr_patch else cfg


def padded_patch_warning(cfg: DistillConfig, teacher) -> str | None:
    """Return a one-line ``warning:`` when an explicit ``--lr-patch`` is a size the teacher does not take (below its
    minimum input or off its multiple), so every patch is padded before the teacher sees it; else None.

    The run goes on as asked (an automatic patch is raised by :func:`fit_patch` instead): on Real-CUGAN (minimum
    32 px) a 12 px patch cost 1.1 dB of fidelity (BENCHMARKS.md, section 17)."""
    if cfg.lr_patch_auto:
        return None
    fit = teacher.fit_size(cfg.lr_patch)
    if fit == cfg.lr_patch:
        return None
    return (f"warning: --lr-patch {cfg.lr_patch}: the teacher takes inputs of {teacher.size_requirements.describe()}, "
            f"so every {cfg.lr_patch} px patch is padded to {fit} px and most of what the student learns from is "
            f"padding; use --lr-patch {fit} or leave --lr-patch out.")


def teacher_params(teacher: dict) -> str:
    """Return the teacher's params cell: what its eval forward uses (the students' counts are what they run with
    too), and the stored count beside it when training-only branches (SPAN's Conv3XC) make that larger."""
    params, used = teacher.get("params", 0), teacher.get("inference_params")
    if isinstance(used, int) and 0 < used < params:
        return f"{used:,} ({params:,} stored)"
    return f"{params:,}"


def summary_table(run: dict) -> Table:
    """Return a rich table with one row per stage (blocks, params, KD loss, Y-PSNR/SSIM, seconds), with a caption
    saying to judge the students by fidelity when the teacher scores less than ``PERCEPTUAL_MARGIN_DB`` over
    bicubic on the eval images (a perceptual teacher, which ``bench`` ranks by fidelity too), or, for a finished
    run of a PSNR-trained teacher, saying to train longer when no stage scores above bicubic."""
    margin = (run["teacher_psnr_y"] - run["bicubic_psnr_y"]
              if run.get("teacher_psnr_y") is not None and run.get("bicubic_psnr_y") is not None else None)
    caption = None
    scored = [s["val_psnr_y"] for s in run["stages"] if s.get("val_psnr_y") is not None]
    best = max(scored) if run.get("complete") and scored else None
    if under_bicubic(best, run.get("teacher_psnr_y"), run.get("bicubic_psnr_y")):
        caption = (f"No stage scores above bicubic here ({run['bicubic_psnr_y']:.2f} dB): bicubic upscaling serves "
                   "as well as any of these students. Distill again with more --steps-per-stage (or a longer "
                   "--time-budget) before shipping one.")
    elif margin is not None and margin < PERCEPTUAL_MARGIN_DB:
        caption = (f"The teacher scores {margin:+.2f} dB against bicubic here: a perceptual teacher. Its students "
                   "copy it more closely as they grow (fidelity) even where their Y-PSNR to the ground truth falls; "
                   "judge them by fidelity, as bench ranks them.")
    table = Table(title=f"sr-shrink distill: {run['mode']} x{run['scale']}", caption=caption)
    for col in ("stage", "blocks", "params", "final KD", "Y-PSNR", "Y-SSIM", "fidelity Y-PSNR", "seconds"):
        table.add_column(col, justify="right")

    def metric(s: dict, key: str, digits: int) -> str:  # "-" where the run had no eval images (--eval none)
        value = s.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    for s in run["stages"]:
        table.add_row(str(s["stage"]), str(s["n_blocks"]), f"{s['params']:,}",
                      f"{s['final_kd_loss']:.4f}" if s.get("steps") != 0 else "-",  # untrained (--time-budget)
                      metric(s, "val_psnr_y", 2), metric(s, "val_ssim_y", 4), metric(s, "fidelity_psnr_y", 2),
                      f"{s['seconds']:.0f}")
    if "teacher_psnr_y" in run:
        table.add_row("teacher", "", teacher_params(run["teacher"]), "", metric(run, "teacher_psnr_y", 2),
                      metric(run, "teacher_ssim_y", 4), "", "")
        table.add_row("bicubic", "", "", "", metric(run, "bicubic_psnr_y", 2), metric(run, "bicubic_ssim_y", 4), "",
                      "")
    return table
