"""The stages of a distillation: :func:`run_stages` wires the source, the training state, the budget plan and
:func:`~.train.train_stage`, and keeps run.json.

Stage i trains a student of ``n_blocks_i`` blocks; stage i+1 starts from stage i grown by ``grow``
(output-preserving), the generator (if any) carrying over. With ``block="rep"`` the student trains in its
re-parameterizable form; every ``stage_XX.pt`` holds its exact collapse (``collapse``: a plain student, so export,
bench and upscale see the plain graph), while ``state.pt`` holds the training form, from which the next stage
grows. Files (named by :class:`~sr_shrink.run.RunDir`): ``stage_XX.pt`` per finished stage, ``generator.pt``,
``state.pt`` (removed when the run completes) and ``run.json``; all written atomically.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..data import EvalPair
from ..evaluate import evaluate_bicubic, evaluate_with_fidelity, teacher_pixels, teacher_references
from ..models.registry import save_model_checkpoint
from ..models.student import SRStudent, collapse, grow, load_student, to_rep
from ..progress import task
from ..record import RunRecord, StageRecord
from ..run import RunDir
from ..teachers import count_inference_params
from .budget import CHECK_STEPS, eval_images_that_fit, first_plan, pool_seconds, refuse_if_short, replan
from .buffer import ReplayBuffer
from .config import DistillConfig
from .env import Env, rank0
from .generator import save_generator
from .perceptual import QUIET_S, resolve_mix, resolve_synthetic
from .probe import probe_steps, setup_of, timed_forward
from .resume import adopt, check_same_run, finished_stages, lost_state_note
from .sources import Labeller, make_source, resolve_teacher_dtype
from .state import TrainState
from .train import Callbacks, buffer_kd, train_stage

BUFFER_BATCHES = 32
TEACHER_KEYS = ("format", "arch", "arch_name", "params", "value_range", "value_range_guessed", "size_requirements",
                "config")


@dataclass
class Job:
    """What a run is made of: the teacher, the config, the folder, the eval pairs, where it runs, when it started
    (``--time-budget`` counts from there), the callbacks, where its notes go and the eval folder as given."""

    teacher: torch.nn.Module
    cfg: DistillConfig
    rundir: RunDir
    eval_pairs: list[EvalPair]
    env: Env
    started: float
    callbacks: Callbacks
    log: Callable[[str], None] = field(default=lambda _message: None)  # one-line notes (distill's ``log``)
    eval_dir: str | None = None  # --eval (:func:`eval_folder`; None: the bundled split), recorded for a --resume


def eval_folder(eval_dir: str | Path | None) -> str | None:
    """Return how run.json records ``--eval``: None (the bundled split), "none" (no scoring) or the folder's absolute
    path, so a ``--resume`` from another folder finds it."""
    if eval_dir is None:
        return None
    return "none" if str(eval_dir) == "none" else str(Path(eval_dir).resolve())


def new_record(job: Job, cfg: DistillConfig, dtype: str) -> RunRecord:
    """Return the run.json record of a run of ``cfg`` that has not trained yet."""
    info = job.teacher.info
    d = info.to_dict()
    run = RunRecord(scale=cfg.scale, teacher={"path": info.path, "abs_path": str(Path(info.path).resolve()),
                                              "sha256": info.sha256,
                                              **{k: d[k] for k in TEACHER_KEYS if k in d},
                                              "inference_params": count_inference_params(job.teacher)},
                    mode=cfg.mode, seed=cfg.seed, recipe=cfg.recipe(), config=cfg.to_dict(), world_size=job.env.world,
                    teacher_dtype=dtype, eval_dir=job.eval_dir, stages=[], complete=False)
    if getattr(info, "value_range_guessed", False):
        run.value_range_guessed = True
    return run


def run_stages(job: Job, resume: bool) -> dict:
    """Train every stage not already finished; return the run.json dict."""
    env, rundir, cb = job.env, job.rundir, job.callbacks
    old = rundir.run if resume and rundir.run else None
    cfg = adopt(job.cfg, old)
    dtype = resolve_teacher_dtype(cfg.teacher_dtype, env.device)
    teacher = job.teacher.to(env.device)
    cfg, kind = rank0(resolve_synthetic(cfg, teacher, old), env.world)  # --synthetic auto, before the source
    cfg = resolve_mix(cfg, kind)  # a budgeted run on a perceptual teacher: the pool alone
    run = new_record(job, cfg, dtype)
    was = RunRecord.from_dict(old) if old is not None else None
    run.teacher_kind = kind.to_dict() if kind is not None else (was.teacher_kind if was is not None else None)
    if was is not None and cfg.time_budget and was.time_budget is not None:
        run.time_budget = was.time_budget
        job.eval_pairs = job.eval_pairs[:was.time_budget.get("eval_images", len(job.eval_pairs))]
    label = Labeller(teacher, env.device, dtype, env.channels_last, env.amp, cfg.batch, cfg.lr_patch, cb.label,
                     cfg.targets)
    g = torch.Generator().manual_seed(cfg.seed * 1000 + env.rank)
    pool_images = (was.pool or {}).get("images") if was is not None and run.time_budget is not None else None
    source = make_source(cfg, label, g, env.rank, env.world, pool_images)  # a budgeted run's pool: as recorded
    state = TrainState(cfg, g, ReplayBuffer(BUFFER_BATCHES * cfg.batch), source, label, rundir.root)
    write = (lambda: rundir.write_run(run)) if env.main else (lambda: None)
    blocks = cfg.stages()
    torch.manual_seed(cfg.seed)
    student = SRStudent(cfg.scale, blocks[0], cfg.channels, cfg.block).to(env.device)  # before the state loads
    if was is not None:
        check_same_run(str(rundir.root), old, run.teacher, cfg, env.device)
        run.stages = was.stages or []
        run.resumed_from = was.resumed_from
    lost: list[str] = []  # why state.pt could not be read: then the run goes on from the stage files
    saved = state.load(rundir.state_path, env.rank, env.world, lost.append) if resume else None
    if saved is not None:  # the state's list of finished stages is the authority on where to go on
        run.stages = [StageRecord.from_dict(s) for s in saved["stages"]]
    # the finished stages up to the first whose checkpoint is gone or unreadable: each later stage grew from it, so
    # they go again
    run.stages, note = finished_stages(rundir.root, run.stages)
    state.stages = run.stages
    if lost and env.main:
        job.log(lost_state_note(rundir.state_path, lost[0], run.stages, len(blocks)))
    if note and env.main:
        job.log(note)
    done = len(state.stages)
    if was is not None and was.eval_dir is not None and eval_folder(was.eval_dir) != job.eval_dir and done and \
            env.main:
        job.log(other_eval_note(rundir.root, was.eval_dir, job.eval_dir, done >= len(blocks)))
    if old is not None and done >= len(blocks) and not lost and env.main:  # else it re-scores and reprints silently
        job.log(f"note: {rundir.root} already holds all {len(blocks)} stages; nothing to train, the table below is the "
                "finished run (pass --force to start it over).")
    if saved is not None and saved["stage_idx"] != done:
        saved = None  # a stale state (its stage's checkpoint is gone): start that stage afresh
    if (old is not None or saved is not None) and done < len(blocks):
        picked_up = {"stage": done + 1, "step": saved["step"] if saved is not None else 0}
        if cfg.block == "rep" and done and saved is None:
            picked_up["from_collapsed"] = True  # the training form was lost: see to_rep
        run.resumed_from = [*(run.resumed_from or []), picked_up]
    budgeted = bool(cfg.time_budget) and run.time_budget is None and done < len(blocks)  # planned here

    def spent() -> float:  # the budget's clock
        return time.time() - job.started

    phases: dict[str, list] = {}  # name -> [planned, spent] until the plan exists
    if budgeted:  # refused at once (before the long setup) when even one step per stage cannot fit
        phases["startup"] = [None, spent()]
        t0 = time.time()
        forward = rank0(timed_forward(cfg, label, job.eval_pairs if env.main else []), env.world)
        setup = setup_of(cfg, forward, job.eval_pairs, source.plays, job.teacher.info.params)
        phases["forward_probe"] = [None, time.time() - t0]
        pixels = [teacher_pixels(tuple(p.lr.shape[-2:])) for p in job.eval_pairs]
        kept = rank0(eval_images_that_fit(pixels, setup, cfg.time_budget * 60), env.world)
        if kept < len(pixels):  # the eval references would eat the budget: score the first images only
            job.eval_pairs = job.eval_pairs[:kept]
            setup = replace(setup, eval_pixels=sum(pixels[:kept]))
        refuse_if_short(cfg.time_budget, setup, spent())
    fidelity_pairs: list[EvalPair] = []
    recorded = was is not None and done >= len(blocks) and None not in (was.teacher_psnr_y, was.bicubic_psnr_y)
    if recorded:  # nothing to train: the finished run's references, not another pass of the teacher
        run.teacher_psnr_y, run.teacher_ssim_y = was.teacher_psnr_y, was.teacher_ssim_y
        run.bicubic_psnr_y, run.bicubic_ssim_y = was.bicubic_psnr_y, was.bicubic_ssim_y
    elif job.eval_pairs and env.main:
        t0 = time.time()
        tr, fidelity_pairs = teacher_references(label.teacher, job.eval_pairs, cfg.scale)
        br = evaluate_bicubic(job.eval_pairs, cfg.scale)
        run.teacher_psnr_y, run.teacher_ssim_y = tr["psnr_y"], tr["ssim_y"]
        run.bicubic_psnr_y, run.bicubic_ssim_y = br["psnr_y"], br["ssim_y"]
        if budgeted:
            phases["eval_references"] = [setup.eval_references(), time.time() - t0]
    if done < len(blocks):
        t0 = time.perf_counter()
        share = rank0(pool_seconds(cfg.time_budget * 60, spent(), setup), env.world) if budgeted else None
        pool = source.prepare(share)
        if pool is not None:
            state.timing["pool"] += time.perf_counter() - t0
            run.pool = pool
            if budgeted:
                phases["pool"] = [share, time.perf_counter() - t0]
        if budgeted:
            t0 = time.time()
            costs, eval_s = probe_steps(state, student, blocks, job.eval_pairs, fidelity_pairs, env.world, env.main)
            phases["step_probe"] = [setup.step_probe(), time.time() - t0]
            plan = first_plan(cfg.time_budget, rank0(spent(), env.world), costs, eval_s, len(blocks), phases)
            plan.eval_images = len(job.eval_pairs) if kept < len(pixels) else None
            cfg = state.cfg = replace(cfg, steps_per_stage=plan.steps_per_stage)
            run.config, run.time_budget = cfg.to_dict(), plan.to_dict()
    write()
    if done and cfg.block == "rep" and saved is not None:  # stage checkpoints are collapsed: the training
        student = _restored(saved, env)  # form of the last stage is in state.pt
    elif done:
        student, _ = load_student(rundir.root / state.stages[-1].checkpoint)
        student = (to_rep(student) if cfg.block == "rep" else student).to(env.device)

    def save(step: int, seconds: float) -> None:
        state.step, state.seconds = step, seconds
        state.save(rundir.state_path, student, env.world, env.main)
        cb.call("saved", state.stage_idx, step)

    for idx in range(done, len(blocks)):
        t_stage = time.time()
        mid_stage = saved is not None and saved["step"] > 0
        if mid_stage:  # the saved student, no growth (no random draw)
            student = _restored(saved, env)
        while student.n_blocks < blocks[idx]:
            student = grow(student, g).to(env.device)
        if env.channels_last:
            student = student.to(memory_format=torch.channels_last)
        state.stage_idx, state.step, state.seconds, state.kd_hist, state.first_kd = idx, 0, 0.0, [], None
        state.stage_steps = None
        state.opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
        if mid_stage:
            state.opt.load_state_dict(saved["opt"])
            state.step, state.seconds, state.kd_hist = saved["step"], saved["seconds"], list(saved["kd_hist"])
            state.first_kd, state.stage_steps = saved.get("first_kd"), saved.get("stage_steps")
        saved = None
        cb.call("stage_start", idx, student, state)
        start = copy.deepcopy(student) if budgeted and not mid_stage else None  # grown, untrained
        planned = state.total_steps
        pace = _paced(plan.deadline(idx, time.time(), state.step), env.world) if budgeted else None
        seconds = train_stage(state, student, save, cb, env.world, pace)
        untrained = (start is not None and state.total_steps < planned
                     and rank0(_start_closer(state, start, student), env.world))
        if untrained:
            _untrain(job, state, student, start, cfg.time_budget, env.main)
        student = student.to(memory_format=torch.contiguous_format)
        cb.call("stage_end", idx, student)
        run.stages.append(finish_stage(job, state, student, blocks[idx], seconds, fidelity_pairs))
        if untrained:
            run.stages[-1].steps = 0
        if budgeted:  # the steps it took (fewer when its deadline shortened it)
            plan.stage_steps[idx] = run.stages[-1].steps
        if budgeted and idx + 1 < len(blocks):  # the next stages' steps, from the pace this one kept
            steps = rank0(replan(plan, idx + 1, spent(), seconds, time.time() - t_stage - seconds + 1.0), env.world)
            if steps == 0 and (plan.stage_steps[idx] or untrained) and env.main:  # said once, after the last trained
                later = f"stage {idx + 2}" if idx + 2 == len(blocks) else f"stages {idx + 2}-{len(blocks)}"
                job.log(f"note: --time-budget {cfg.time_budget:g}: no time is left to train {later}; written "
                        f"untrained, grown from stage {idx + 1} (the same output as stage {idx + 1}).")
            cfg = state.cfg = replace(cfg, steps_per_stage=steps)
            run.config = cfg.to_dict()
        state.stage_idx, state.step, state.seconds, state.kd_hist, state.stage_steps = idx + 1, 0, 0.0, [], None
        save(0, 0.0)  # before run.json: the state lists this stage as done
        if budgeted:
            plan.spent(f"stage_{idx + 1}", time.time() - t_stage)
            run.time_budget = plan.to_dict()
        write()
        env.barrier()
    run.complete = True
    run.timing_seconds = {k: round(v, 2) for k, v in state.timing.items()}
    if budgeted:
        plan.spent("final", time.time() - t_stage - plan.phases[f"stage_{len(blocks)}"][1])
        plan.spent_seconds = spent()
        run.time_budget = plan.to_dict()
    write()
    if env.main:
        rundir.state_path.unlink(missing_ok=True)
    return run.to_dict()


def _start_closer(state: TrainState, start: SRStudent, trained: SRStudent) -> bool:
    """Return True when the stage's student as it started (``start``) is at least as close to the teacher on the
    replay buffer's pairs (its latest training batches) as the ``trained`` one."""
    return buffer_kd(state, start) <= buffer_kd(state, trained)


def _untrain(job: Job, state: TrainState, student: SRStudent, start: SRStudent, minutes: float, main: bool) -> None:
    """Put the stage's starting weights back into ``student`` and forget its KD losses, with a note: a stage the
    budget cut to a few steps can end further from the teacher than it began (Adam's first steps at the top of the
    cosine move it away; BENCHMARKS.md, section 47)."""
    idx, steps = state.stage_idx, state.total_steps
    student.load_state_dict(start.state_dict())
    state.kd_hist, state.first_kd = [], None
    if main:
        same = f", grown from stage {idx} (the same output as stage {idx})" if idx else ""
        job.log(f"note: --time-budget {minutes:g} cut stage {idx + 1} to {steps} steps, which left it further from "
                f"the teacher on its latest training batches than it started; written untrained{same}.")


def _paced(deadline, world: int) -> Callable[[int, int], int]:
    """Return ``train_stage``'s ``pace`` for a budgeted stage: the total steps the ``deadline``
    (:class:`~.budget.StageDeadline`) allows, checked after every step in one process (a clock read until its pace
    window has passed: a step that takes seconds on a busy machine is judged at once) and every ``CHECK_STEPS``
    steps with several (rank 0's figure broadcast to every rank)."""
    def pace(step: int, total: int) -> int:
        if world > 1 and step % CHECK_STEPS:
            return total
        return rank0(deadline.steps(step, total, time.time()), world)
    return pace


def _restored(saved: dict, env: Env) -> SRStudent:
    student = SRStudent(**saved["student_config"]).to(env.device)
    student.load_state_dict(saved["student"])
    return student


def other_eval_note(root, recorded: str, given: str | None, finished: bool) -> str:
    """Return the note for a resume whose ``--eval`` (``given``; None: the bundled split) is not the folder the
    run's finished stages were scored on (``recorded``; "none": not scored)."""
    def scored(folder: str | None) -> str:
        if folder == "none":
            return "not scored (--eval none)"
        return "scored on the bundled eval split" if folder is None else f"scored on --eval {folder}"

    if finished:
        given_as = "the bundled eval split" if given is None else f"--eval {given}"
        return (f"note: {root}'s stages were {scored(recorded)}; there is nothing to train, so {given_as} is not "
                f"used (sr-shrink bench {root} --eval FOLDER scores every stage on a folder).")
    return (f"note: {root}'s finished stages were {scored(recorded)}; the stages this resume trains are "
            f"{scored(given)}, so the table mixes the two (leave --eval out to keep the run's).")


def finish_stage(job: Job, state: TrainState, student: SRStudent, n_blocks: int, seconds: float,
                 fidelity_pairs: list[EvalPair]) -> StageRecord:
    """Evaluate and save the stage's (collapsed) student and the generator; return the stage's run.json record."""
    cfg, env, idx = state.cfg, job.env, state.stage_idx
    shipped = collapse(student) if student.block == "rep" else student  # what stage_XX.pt holds
    path = job.rundir.stage_path(idx + 1)
    recent = state.kd_hist[-20:]
    entry = StageRecord(stage=idx + 1, n_blocks=n_blocks, channels=cfg.channels,
                        params=sum(p.numel() for p in shipped.parameters()), checkpoint=path.name,
                        steps=state.total_steps,
                        first_kd_loss=round(state.first_kd or float("nan"), 6),
                        final_kd_loss=round(sum(recent) / len(recent), 6) if recent else float("nan"),
                        seconds=round(seconds, 2))
    if shipped is not student:
        entry.train_params = sum(p.numel() for p in student.parameters())
    if job.eval_pairs and env.main:
        with task(f"scoring stage {idx + 1} on {len(job.eval_pairs)} eval images", total=len(job.eval_pairs),
                  unit="images", quiet_s=QUIET_S) as advance:  # a second or more with large images or a large student
            res, fid = evaluate_with_fidelity(shipped, job.eval_pairs, fidelity_pairs, cfg.scale, advance)
        entry.val_psnr_y, entry.val_ssim_y = res["psnr_y"], res["ssim_y"]
        entry.fidelity_psnr_y, entry.fidelity_ssim_y = fid.get("fidelity_psnr_y"), fid.get("fidelity_ssim_y")
        student.train()
    if env.main:
        extra = {"stage": idx + 1, "n_blocks": n_blocks, "scale": cfg.scale, "val_psnr_y": entry.val_psnr_y,
                 "mode": cfg.mode}
        if shipped is not student:
            extra["train_block"] = student.block
        save_model_checkpoint(shipped, "student", shipped.config(), path, extra=extra)
        if state.source.generator is not None:
            save_generator(state.source.generator, job.rundir.generator_path)
    return entry
