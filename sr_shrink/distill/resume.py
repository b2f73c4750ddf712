"""The run folder before the first step: fresh, overwritten (``--force``) or continued (``--resume``).

A resumed run must have the same teacher (sha256, architecture, value range, EDSR res_scale) and recipe
(``RESUME_KEYS``); it adopts the plan of a ``--time-budget`` run and the fresh-labelling of a run from before the
pool. run.json records where it picked up in ``resumed_from``.
"""

from __future__ import annotations

import contextlib
import shlex
from dataclasses import replace
from pathlib import Path

import torch

from ..errors import SRShrinkError
from ..io import read_json_object
from ..models.student import UnreadableStudent, load_student
from ..run import LOCK, RUN_JSON, RunDir
from .config import RESUME_KEYS, DistillConfig, flag
from .sources import resolve_teacher_dtype


@contextlib.contextmanager
def prepare_run_dir(root: Path, resume: bool, force: bool):
    """Create the run folder ``root``, check it is writable, lock it for this process (:meth:`RunDir.lock`: a
    second writer is refused) and check it is free (or resumable); empty it for ``force``; a clear error if not.
    The lock is held until the ``with`` block ends. When the block fails before anything was written, the folders
    this call made (``root`` and any missing parents) are removed again: a failed run leaves no empty folder.
    run.json is read once the folder is cleared (``force`` starts over even when it is unreadable); an unreadable one
    refuses a ``resume`` (:func:`readable_record`). Yields the RunDir."""
    made = missing_folders(root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SRShrinkError(f"{root}: cannot write there ({exc.strerror}); pass a writable --out folder.") from None
    rundir = RunDir(root, {}, {})  # run.json is read below: --force clears it first, --resume checks it
    with rundir.lock():
        if rundir.holds_run() and not (resume or force):
            raise SRShrinkError(f"{rundir.root}: already holds a run{_which_run(rundir)}; pass another --out for a "
                                "new run, --resume to continue this one or --force to overwrite it.")
        if force and not resume:
            rundir.clear()
        if resume and not readable_record(rundir.run_path):
            orphans = sorted(p.name for p in [*root.glob("stage_*.pt"), rundir.state_path] if p.is_file())
            if orphans:  # run.json was written before any of them: it was lost since
                raise SRShrinkError(f"{root}: holds {', '.join(orphans)} but no run.json, the only record of the "
                                    f"run's teacher and options, {UNCHECKED}")
        try:
            yield RunDir.create(root)
        except BaseException:
            remove_empty(made)
            raise


def recorded_run(root: Path) -> dict:
    """Return the run.json object in ``root``, or {} when there is none or it cannot be read (for messages that
    say what a folder holds; a resume reads it with :func:`readable_record`, which refuses a damaged one)."""
    try:
        return read_json_object(root / RUN_JSON, RUN_JSON)
    except SRShrinkError:
        return {}


def _which_run(rundir: RunDir) -> str:
    """Return `` (of TEACHER, finished)`` (or ``unfinished``) for the run in ``rundir`` as its run.json says, or ""
    when run.json is missing or cannot be read: a second teacher distilled into the default --out is refused there,
    and the teacher's name says whose run it is."""
    run = recorded_run(rundir.root)
    teacher = run.get("teacher")
    path = teacher.get("path") if isinstance(teacher, dict) else None
    if not path:
        return ""
    return f" (of {Path(str(path)).name}, {'finished' if run.get('complete') else 'unfinished'})"


# the end of both refusals of a resume without a readable run.json
UNCHECKED = ("so --resume cannot check it continues the same run: restore run.json and rerun with --resume, or start "
             "over in another --out (--force here deletes the finished stages).")


def readable_record(path: Path) -> dict:
    """Return the run.json object at ``path`` ({} when there is none). One that cannot be read (damaged, not a JSON
    object) is an SRShrinkError: it is the only record of the run's teacher (sha256) and options (and of a
    ``--time-budget`` plan), so a resume could not check that it continues the same run; state.pt and the stage
    files do not hold them."""
    try:
        return read_json_object(path, RUN_JSON)
    except SRShrinkError as exc:
        raise SRShrinkError(f"{str(exc).rstrip('.')}; it is the only record of the run's teacher and options, "
                            f"{UNCHECKED}") from None


def missing_folders(root: Path) -> list[Path]:
    """Return ``root`` and those of its parents that do not exist yet, deepest first (empty when ``root``
    exists)."""
    out, folder = [], root.absolute()
    while not folder.exists() and folder != folder.parent:
        out.append(folder)
        folder = folder.parent
    return out


def remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (deepest first) while each holds nothing but the run's lock file; return None. A folder
    with anything else in it is kept, and so are the folders above it."""
    for folder in folders:
        try:
            if {p.name for p in folder.iterdir()} - {LOCK}:
                return
            (folder / LOCK).unlink(missing_ok=True)
            folder.rmdir()
        except OSError:
            return


def nothing_to_resume(root: Path) -> bool:
    """Return True when ``root`` holds nothing a --resume could continue (no run.json, stage file or state.pt)."""
    if not root.is_dir():
        return True
    rundir = RunDir(root, {}, {})
    return not (rundir.holds_run() or rundir.state_path.exists())


def resume_command(root: Path) -> str:
    """Return the command line that continues the run in ``root`` (``sr-shrink distill --out ROOT --resume``: the
    teacher and options come from its run.json)."""
    return f"sr-shrink distill --out {shlex.quote(str(root))} --resume"


def saved_progress(root: Path) -> str:
    """Return one sentence saying what an interrupted run in ``root`` leaves to resume from (a checkpoint at
    stage N step K, the finished stages, run.json alone: a rerun without --resume is refused then, or nothing
    yet), ending with the command that continues it (:func:`resume_command`)."""
    rundir = RunDir(root, {}, {})
    cmd = resume_command(root)
    if rundir.state_path.exists():
        try:
            state = torch.load(rundir.state_path, map_location="cpu", weights_only=True, mmap=True)
            stage, step = int(state["stage_idx"]) + 1, int(state["step"])
        except Exception:  # unreadable: say what is there, not what it holds
            return f"{root} holds state.pt; continue from it with: {cmd}"
        if step:
            return f"{root} holds a checkpoint at stage {stage} step {step}; continue from it with: {cmd}"
        return (f"{root} holds stage {stage - 1}'s checkpoint (stage {stage} had not saved yet); start stage {stage} "
                f"with: {cmd}")
    stages = sorted(root.glob("stage_*.pt")) if root.is_dir() else []
    if stages:
        return f"{root} holds {stages[-1].name}; continue after it with: {cmd}"
    if (root / RUN_JSON).is_file():  # a rerun without --resume would be refused: the folder holds a run
        return (f"{root} holds run.json but no checkpoint yet; --force starts over, and this starts stage 1 again "
                f"with its teacher and options: {cmd}")
    return f"nothing was saved in {root} yet (no checkpoint); rerun without --resume to start over."


def finished_stages(root: Path, stages: list) -> tuple[list, str | None]:
    """Return (the leading ``stages`` records whose checkpoint file is in ``root`` and loads, a one-line note naming
    the first whose file is there but cannot be read, else None). Each later stage grew from the first missing or
    unreadable one, so a resume trains it and every stage after it again."""
    kept = []
    for rec in stages:
        path = root / str(rec.checkpoint)
        if not path.is_file():
            return kept, None
        try:
            load_student(path)
        except UnreadableStudent as exc:
            return kept, f"note: {path}: {exc.reason}; training stage {rec.stage} and the stages after it again."
        kept.append(rec)
    return kept, None


def lost_state_note(path: Path, reason: str, finished: list, n_stages: int) -> str:
    """Return the one-line note of a resume whose state.pt at ``path`` could not be read (``reason``) and that goes
    on from the ``finished`` stage records (of ``n_stages``) instead, as if there were no state.pt: the stage that
    was in progress starts again from its first step, grown from the last finished stage's file."""
    if len(finished) >= n_stages:
        then = "every stage is finished, so nothing is trained again"
    elif finished:
        then = (f"stage {len(finished) + 1} starts again from its first step, grown from "
                f"{finished[-1].checkpoint}")
    else:
        then = "stage 1 starts again from its first step"
    return (f"note: {path}: not a readable checkpoint ({reason}); resuming from the finished stage files instead: "
            f"{then}.")


def adopt(cfg: DistillConfig, old: dict | None) -> DistillConfig:
    """Return ``cfg`` with what a resumed run takes over from the run ``old`` it continues: the steps of a
    ``--time-budget`` plan, ``pool`` 0 for a run from before the pool (it labelled fresh images for every
    batch, and goes on doing so), ``targets`` raw for a run from before ``--targets`` (its KD targets were
    never clamped, and stay so) and, when ``--mix`` was left out, the run's recorded ``mix``."""
    if old is None:
        return cfg
    take = {}
    if cfg.time_budget and "time_budget" in old:  # go on with the plan made at the start
        take["steps_per_stage"] = old.get("config", {}).get("steps_per_stage", cfg.steps_per_stage)
    if "pool" not in old.get("config", {"pool": 0}):
        take["pool"] = 0
    if "targets" not in old.get("config", {"targets": "raw"}):
        take["targets"] = "raw"
    if cfg.mix_auto and isinstance(old.get("config", {}).get("mix"), (int, float)):  # --mix left out: the run's
        take["mix"] = old["config"]["mix"]  # share (a budgeted run from before the pool-only budget default: 0.5)
    return replace(cfg, **take) if take else cfg


# the config fields a --resume takes from run.json when the command line leaves them out, by their option's name
# (not ``synthetic``: ``auto`` takes the recorded sources on a resume, resolve_synthetic)
RECORDED_OPTIONS = ("mode", "data_dir", "data_target", "stage_step", "steps_per_stage", "time_budget", "channels",
                    "block", "batch", "lr_patch", "lr", "student_steps_per_g", "g_lr", "w_r", "mix", "g_kind",
                    "kd_loss", "reuse", "teacher_dtype", "pool", "targets", "scale", "seed", "save_every")


def recorded_options(root: Path) -> dict:
    """Return the options the run in ``root`` was started with, named as distill's command line names them, for a
    ``--resume`` that leaves them out (so ``sr-shrink distill --out RUN --resume`` goes on with the run's teacher and
    recipe): ``teacher`` (the file run.json names, when it is there), ``stages`` ("A:B"), the config fields of
    ``RECORDED_OPTIONS`` (``steps_per_stage`` only without a ``--time-budget``, whose plan the resume adopts),
    ``eval_dir`` (when the run recorded one) and the teacher overrides ``value_range`` ("1" or "255", unless it was
    a guess, which the resume makes again) and ``res_scale``. {} when ``root`` holds no readable run.json (the
    resume then says why it cannot go on, or starts a new run)."""
    try:
        old = readable_record(root / RUN_JSON) if root.is_dir() else {}
    except SRShrinkError:
        return {}
    config = old.get("config")
    if not isinstance(config, dict):
        return {}
    out = {k: config[k] for k in RECORDED_OPTIONS if config.get(k) is not None}
    if out.get("time_budget"):
        out.pop("steps_per_stage", None)
    else:
        out.pop("time_budget", None)
    if isinstance(config.get("stage_start"), int) and isinstance(config.get("stage_end"), int):
        out["stages"] = f"{config['stage_start']}:{config['stage_end']}"
    rundir = RunDir(root, old, {})
    teacher = rundir.teacher_path()
    if teacher is not None:
        out["teacher"] = str(teacher)
    if isinstance(old.get("eval_dir"), str):
        out["eval_dir"] = old["eval_dir"]
    overrides = rundir.teacher_overrides()
    if overrides["value_range"] is not None and not (old.get("teacher") or {}).get("value_range_guessed"):
        out["value_range"] = f"{overrides['value_range']:g}"
    if overrides["res_scale"] is not None:
        out["res_scale"] = overrides["res_scale"]
    return out


def check_same_run(where: str, old: dict, new_teacher: dict, cfg: DistillConfig, device: torch.device) -> None:
    """Raise an SRShrinkError naming the first difference between ``old`` run.json and this run (its teacher
    record ``new_teacher`` and ``cfg``)."""
    where = f"{where}: "
    tip = "resume with the same options or pass --force to start over."
    old_teacher = old.get("teacher", {})
    if old_teacher.get("sha256") != new_teacher["sha256"]:
        raise SRShrinkError(f"{where}was distilled from another teacher ({old_teacher.get('path')}, sha256 "
                            f"{str(old_teacher.get('sha256'))[:12]}...), not {new_teacher['path']} (sha256 "
                            f"{new_teacher['sha256'][:12]}...); pass that teacher, or --force to start over.")
    if old_teacher.get("arch") not in (None, new_teacher.get("arch")):
        raise SRShrinkError(f"{where}was distilled from a {old_teacher['arch']} teacher, not a "
                            f"{new_teacher.get('arch')}; {tip}")
    if old_teacher.get("value_range") not in (None, new_teacher.get("value_range")):
        raise SRShrinkError(f"{where}was distilled with --value-range {old_teacher['value_range']:g}, not "
                            f"{new_teacher.get('value_range'):g}; {tip}")
    if "config" in old_teacher:
        old_res, new_res = old_teacher["config"].get("res_scale"), new_teacher["config"].get("res_scale")
        if old_res != new_res:
            show = (lambda v: "(the default)" if v is None else f"{v:g}")  # noqa: E731
            raise SRShrinkError(f"{where}was distilled with --res-scale {show(old_res)}, not {show(new_res)}; {tip}")
    old_cfg, new_cfg = old.get("config", {}), cfg.to_dict()
    for key in RESUME_KEYS:
        if key == "teacher_dtype" and key in old_cfg:  # auto and what it resolved to are the same run
            if resolve_teacher_dtype(old_cfg[key], device) == resolve_teacher_dtype(new_cfg[key], device):
                continue
        if key in old_cfg and old_cfg[key] != new_cfg[key]:
            raise SRShrinkError(f"{where}was started with {flag(key)} {_show(key, old_cfg)}, not "
                                f"{_show(key, new_cfg)}; {tip}")


def _show(key: str, cfg: dict) -> str:
    """Return how a config value reads on the command line (``--stages`` shows A:B)."""
    if key in ("stage_start", "stage_end"):
        return f"{cfg.get('stage_start')}:{cfg.get('stage_end')}"
    return str(cfg.get(key))
