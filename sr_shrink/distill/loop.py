"""Progressive data-free distillation (Zhang et al., CVPR 2021), with baselines, resume and DDP.

Stage i trains a student of ``n_blocks_i`` blocks on L_KD = ||T(x) - S_i(x)||_1, where x comes from the
run's input source (the generator G, synthetic images, or real photos). In the generator modes, every
``student_steps_per_g`` student steps G takes one step on L_G = -log(L_KD + 1) + w_R ||R(T(G(z))) - G(z)||_1
(+ priors). Stage i+1 starts from stage i grown by ``grow`` (output-preserving); G carries over.

KD targets (``targets="clamp"``, the default) are the teacher's output clamped to its value range [0, 1], as every
image the teacher hands a user is; ``targets="raw"`` keeps them as the network gave them (a teacher such as SPAN
answers noise with values far outside [0, 1]). L_G always sees the raw output: the clamp only touches what the
student is trained on (``_label``, the pool, and the generator's batch put into the replay buffer).

Files in RUN_DIR: ``stage_XX.pt`` per finished stage, ``generator.pt``, ``state.pt`` (the resumable state,
saved every ``save_every`` steps) and ``run.json``; all written atomically.

With ``block="rep"`` the student trains in its re-parameterizable form (``SRStudent(block="rep")``); every
``stage_XX.pt`` holds its exact collapse (``collapse``: a plain student, so export, bench and upscale see
the plain graph), while ``state.pt`` holds the training form, from which the next stage grows.

Resume is bit-exact on the CPU: ``state.pt`` holds, besides the student, its optimiser and the generator, every
rank's random generators and replay buffer and the list of finished stages, so a run killed at any point and
resumed writes the same stage checkpoints as one that never stopped. A resumed run must have the same teacher
(sha256) and recipe (``RESUME_KEYS``); run.json records where it picked up in ``resumed_from``.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..data import EvalPair
from ..errors import SRShrinkError
from ..evaluate import evaluate_bicubic, evaluate_model, fidelity, teacher_references
from ..io import atomic_torch_save
from ..models.registry import save_model_checkpoint
from ..models.student import SRStudent, collapse, grow, load_student, to_rep
from ..run import RunDir
from ..teachers import Teacher
from .buffer import ReplayBuffer
from .config import RESUME_KEYS, DistillConfig, flag
from .generator import make_generator, save_generator
from .losses import generator_loss, kd_loss
from .pool import LabelledPool, plan_pool
from .sources import SYNTHETIC, RealPatches, synthetic, synthetic_mix

BUFFER_BATCHES = 32
TEACHER_DTYPE = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
PROBE_WARMUP = 2  # --time-budget: untimed steps before the probe's timed ones
PROBE_STEPS = 8  # --time-budget: timed student steps per probed student size
OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory")
STATE_VERSION = 2
TEACHER_KEYS = ("format", "arch", "arch_name", "params", "value_range", "value_range_guessed", "size_requirements",
                "config")


@dataclass
class Env:
    """Where the run executes: device, distributed rank/world size, output verbosity."""

    device: torch.device
    rank: int = 0
    world: int = 1
    quiet: bool = False
    amp: bool = False
    channels_last: bool = False

    @property
    def main(self) -> bool:
        """Return True on the process that writes files and prints."""
        return self.rank == 0


def resolve_device(name: str = "auto") -> torch.device:
    """Return the torch device for ``auto`` (cuda > mps > cpu) or the named one, checking it exists."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SRShrinkError("--device cuda: no CUDA device is available here; use --device cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise SRShrinkError("--device mps: no Apple GPU is available here; use --device cpu.")
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun; return (rank, world size, device for this rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank()
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    return rank, world, device


def resolve_teacher_dtype(name: str, device: torch.device) -> str:
    """Return the concrete teacher precision for ``--teacher-dtype``: ``auto`` is bf16 on a CUDA device that
    supports it and fp32 elsewhere (on CPUs without native bf16, e.g. this project's AMD EPYC runners, bf16
    autocast made the teacher 8x slower: BENCHMARKS section 10); the others are returned as they are."""
    if name != "auto":
        return name
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def is_oom(exc: BaseException) -> bool:
    """Return True when ``exc`` is an out-of-memory failure of CPU, CUDA or MPS."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(m in str(exc) for m in OOM_MARKERS))


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Create ``run_dir`` and check it is writable and free (or resumable); raise a clear error if not."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise SRShrinkError(f"{run_dir}: cannot write there ({exc.strerror}); pass a writable --out folder.") \
            from None
    holds_run = (run_dir / "run.json").exists() or any(run_dir.glob("stage_*.pt"))
    if holds_run and not (resume or force):
        raise SRShrinkError(f"{run_dir}: already holds a run; pass --resume to continue it or --force to "
                            "overwrite it.")
    if force and not resume:
        for p in list(run_dir.glob("stage_*.pt")) + [run_dir / n for n in ("run.json", "state.pt", "generator.pt")]:
            p.unlink(missing_ok=True)
        shutil.rmtree(run_dir / "exports", ignore_errors=True)


class Distiller:
    """Runs the stages of one distillation; see the module docstring."""

    def __init__(self, teacher: Teacher, cfg: DistillConfig, run_dir: Path, eval_pairs: list[EvalPair],
                 env: Env, teacher_path: str, teacher_sha256: str, started: float | None = None):
        cfg.validate()  # ranges and choices; the checks below need the other fields together
        if cfg.mode in ("datafree", "generator") and cfg.lr_patch % 4:
            raise SRShrinkError(f"--lr-patch {cfg.lr_patch}: the generator needs a multiple of 4, e.g. "
                                f"{cfg.lr_patch // 4 * 4 or 4}.")
        if cfg.mode in ("datafree", "generator") and cfg.batch < 2:
            raise SRShrinkError(f"--batch {cfg.batch}: the generator's loss compares samples within a batch; use "
                                f"--batch 2 or more (16 is the default) with --mode {cfg.mode}.")
        bad = [s for s in cfg.synthetic.split(",") if s not in SYNTHETIC]
        if bad:
            raise SRShrinkError(f"unknown synthetic source {bad[0]!r}; choose from {', '.join(SYNTHETIC)}.")
        if cfg.data_target not in ("teacher", "hr"):
            raise SRShrinkError(f"unknown data target {cfg.data_target!r}; use teacher or hr.")
        if cfg.mode == "data" and not cfg.data_dir:
            raise SRShrinkError("--mode data needs --data DIR, a folder of training images.")
        self.teacher, self.cfg, self.run_dir, self.env = teacher.to(env.device), cfg, run_dir, env
        self.started = time.time() if started is None else started  # --time-budget counts from here
        self.teacher_dtype = resolve_teacher_dtype(cfg.teacher_dtype, env.device)
        self.pool: LabelledPool | None = None
        self.rundir = RunDir.create(run_dir)  # the one reader/writer of run.json
        self.eval_pairs = eval_pairs
        self.scale = cfg.scale
        self.g = torch.Generator().manual_seed(cfg.seed * 1000 + env.rank)
        self.real = RealPatches(cfg.data_dir, cfg.scale, cfg.lr_patch) if cfg.mode == "data" else None
        self.uses_g = cfg.mode in ("datafree", "generator")
        torch.manual_seed(cfg.seed)
        self.gen = make_generator(cfg.g_kind, cfg.lr_patch, cfg.z_dim, cfg.synthetic.split(",")[0]).to(
            env.device) if self.uses_g else None
        self.gen_ema = copy.deepcopy(self.gen).eval() if self.uses_g else None
        self.gen_opt = torch.optim.Adam(self.gen.parameters(), lr=cfg.g_lr, betas=(0.5, 0.999)) \
            if self.uses_g else None
        self.gen_ddp = DDP(self.gen) if (self.uses_g and env.world > 1) else self.gen
        self.g_steps = 0
        self.buffer = ReplayBuffer(BUFFER_BATCHES * cfg.batch)
        info = teacher.info.to_dict()
        self.run = {"scale": cfg.scale, "teacher": {"path": teacher_path, "sha256": teacher_sha256,
                                                    **{k: info[k] for k in TEACHER_KEYS if k in info}},
                    "mode": cfg.mode, "seed": cfg.seed, "recipe": cfg.recipe(), "config": cfg.to_dict(),
                    "world_size": env.world, "teacher_dtype": self.teacher_dtype, "stages": [], "complete": False}
        if getattr(teacher.info, "value_range_guessed", False):
            self.run["value_range_guessed"] = True
        self.fidelity_pairs: list[EvalPair] = []
        self.timing = {"teacher": 0.0, "student": 0.0, "generator": 0.0, "inputs": 0.0, "pool": 0.0}

    # ---------------------------------------------------------------- inputs
    def _synthetic_kinds(self) -> list[str]:
        """Return the synthetic sources of this run's inputs (none for the generator and data modes)."""
        if self.cfg.mode in SYNTHETIC:
            return [self.cfg.mode]
        if self.cfg.mode == "datafree" and self.cfg.mix > 0:
            return self.cfg.synthetic.split(",")
        return []

    def _synthetic_count(self, n: int) -> int:
        """Return how many of a batch of ``n`` inputs are synthetic images (the rest come from G)."""
        return n if self.cfg.mode in SYNTHETIC else int(round(n * self.cfg.mix))

    def _build_pool(self) -> None:
        """Render and label the shared synthetic pool (distill.pool), from its own seeded generator."""
        cfg = self.cfg
        kinds = self._synthetic_kinds()
        if not kinds or cfg.pool <= 0:
            return
        refills = math.ceil(cfg.steps_per_stage / cfg.reuse) + 1  # of one stage: the pool costs at most that
        labels = None if cfg.time_budget else refills * self._synthetic_count(cfg.batch)
        plan = plan_pool(cfg.pool, cfg.lr_patch, cfg.scale, labels)
        t0 = time.perf_counter()
        g = torch.Generator().manual_seed(cfg.seed * 1000 + self.env.rank + 7_000_003)
        self.pool = LabelledPool.build(plan, kinds, self._label, g, cfg.batch, self.env.device)
        seconds = time.perf_counter() - t0
        self.timing["pool"] += seconds
        self.run["pool"] = {**plan.to_dict(), "seconds": round(seconds, 2)}

    def _base(self, n: int) -> dict:
        """Return the keyword arguments that make the refining generator refine ``n`` crops of the pool (no
        rendering): ``{"base": crops}``, or ``{}`` without a pool or with a latent generator."""
        if self.pool is None or not getattr(self.gen, "any_size", False):
            return {}
        return {"base": self.pool.crops(n, self.cfg.lr_patch, self.g, with_targets=False).to(self.env.device)}

    def _label(self, x: torch.Tensor) -> torch.Tensor:
        """Return the KD target for ``x``: the teacher's fp32 output (no gradient), clamped to [0, 1] unless
        ``targets="raw"``; or a clear error when memory runs out."""
        try:
            with torch.no_grad(), self._teacher_autocast():
                return self._target(self.teacher(self._fmt(x)).float())
        except RuntimeError as exc:
            if is_oom(exc):
                raise self._oom_error(exc, x.shape[0], "forward") from None
            raise

    def _target(self, t: torch.Tensor) -> torch.Tensor:
        """Return teacher output ``t`` as a KD target: clamped to [0, 1] (``targets="clamp"``) or as it is (raw)."""
        return t.clamp(0.0, 1.0) if self.cfg.targets == "clamp" else t

    def _oom_error(self, exc: BaseException, n: int, what: str) -> SRShrinkError:
        """Return the one-line error for a teacher ``what`` (forward/backward) that ran out of memory."""
        cfg = self.cfg
        first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        return SRShrinkError(
            f"the teacher's {what} ran out of memory at batch {n} with {cfg.lr_patch} px LR patches ({first}); its "
            f"memory grows with batch x patch area: try --batch {max(1, cfg.batch // 2)}"
            f"{f' or --lr-patch {max(4, cfg.lr_patch // 2 // 4 * 4)}' if cfg.lr_patch > 4 else ''}"
            f"{' or --teacher-dtype bf16' if self.env.device.type == 'cuda' and self.teacher_dtype == 'fp32' else ''}"
            f", in a new run (--force: --resume keeps the batch and patch it started with).")

    def _fresh_inputs(self, n: int) -> torch.Tensor:
        cfg, dev = self.cfg, self.env.device
        if cfg.mode in SYNTHETIC:
            return synthetic(cfg.mode, n, cfg.lr_patch, self.g).to(dev)
        if cfg.mode == "generator":
            return self.gen_ema.sample(n, self.g)
        k = self._synthetic_count(n)  # datafree: synthetic images + generator samples
        x = synthetic_mix(cfg.synthetic.split(","), k, cfg.lr_patch, self.g).to(dev)
        return torch.cat([x, self.gen_ema.sample(n - k, self.g)]) if n - k else x

    @torch.no_grad()
    def _refill(self) -> None:
        t0 = time.perf_counter()
        labelled = None  # (inputs, targets) that need no teacher forward
        if self.real is not None:
            lr, hr = self.real.sample(self.cfg.batch, self.g)
            x = lr.to(self.env.device)
            if self.cfg.data_target == "hr":  # plain supervised training on ground truth
                labelled, x = (x, hr.to(self.env.device)), None
        elif self.pool is not None:  # synthetic share: crops of the labelled pool; G's share: fresh
            k = self._synthetic_count(self.cfg.batch)
            xs, ts = self.pool.crops(k, self.cfg.lr_patch, self.g)
            labelled = xs.to(self.env.device), ts.to(self.env.device)
            rest = self.cfg.batch - k
            x = self.gen_ema.sample(rest, self.g, **self._base(rest)) if rest else None
        else:
            x = self._fresh_inputs(self.cfg.batch)
        t1 = time.perf_counter()
        self.timing["inputs"] += t1 - t0
        if x is not None:
            t = self._label(x)
            x, t = (torch.cat([labelled[0], x]), torch.cat([labelled[1], t])) if labelled else (x, t)
            self.timing["teacher"] += time.perf_counter() - t1
        else:
            x, t = labelled
        self.buffer.add(x, t)

    def _fmt(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.env.channels_last else x

    def _autocast(self):
        """Autocast for the student's forward: bf16 under --amp on CUDA, else off."""
        if self.env.amp and self.env.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _teacher_autocast(self):
        """Autocast for the teacher's forwards: off (fp32, also under --amp) unless --teacher-dtype asks for one."""
        dtype = TEACHER_DTYPE[self.teacher_dtype]
        dev = self.env.device.type
        if dtype is None:
            return torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext()
        return torch.autocast(dev, dtype=dtype)

    # ---------------------------------------------------------------- steps
    def _student_step(self, student, s_ddp, opt) -> float:
        t0 = time.perf_counter()
        x, target = self.buffer.sample(self.cfg.batch, self.g)
        with self._autocast():
            out = s_ddp(self._fmt(x)).float()
        loss = kd_loss(out, target, self.cfg.kd_loss)
        if not torch.isfinite(loss):
            raise FloatingPointError("student")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.timing["student"] += time.perf_counter() - t0
        return loss.item()

    def _generator_step(self, student: SRStudent) -> dict[str, float]:
        cfg, t0 = self.cfg, time.perf_counter()
        self.gen.train()
        z = self.gen.draw_latent(cfg.batch, self.g, **self._base(cfg.batch))
        student.requires_grad_(False)
        try:
            x = self.gen_ddp(z)
            with self._teacher_autocast():
                t = self.teacher(self._fmt(x)).float()
            with self._autocast():
                s = student(self._fmt(x)).float()
            adversarial = self.g_steps >= cfg.g_warmup
            loss, parts = generator_loss(x, z, t, s, self.scale, cfg.w_r, cfg.w_div, cfg.w_nat, adversarial,
                                         cfg.kd_loss)
            if not torch.isfinite(loss):
                raise FloatingPointError("generator")
            self.gen_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.gen.parameters(), 1.0)
            self.gen_opt.step()
        except RuntimeError as exc:
            if is_oom(exc):
                raise self._oom_error(exc, cfg.batch, "forward and backward (generator step)") from None
            raise
        finally:
            student.requires_grad_(True)
        self.g_steps += 1
        with torch.no_grad():
            for pe, p in zip(self.gen_ema.parameters(), self.gen.parameters()):
                pe.lerp_(p, 1 - cfg.g_ema)
            for be, b in zip(self.gen_ema.buffers(), self.gen.buffers()):
                be.copy_(b)
            self.buffer.add(x.detach(), self._target(t.detach()))  # reused for student steps (L_G saw raw t)
        self.timing["generator"] += time.perf_counter() - t0
        return parts

    # ---------------------------------------------------------------- state
    def _state_path(self) -> Path:
        return self.run_dir / "state.pt"

    def _rank_state(self) -> dict:
        """Return this rank's share of the resumable state: its random generators and replay buffer."""
        return {"rng": self.g.get_state(), "torch_rng": torch.get_rng_state(), "buffer": self.buffer.state_dict()}

    def _save_state(self, stage_idx: int, step: int, student, opt, seconds: float, kd_hist: list) -> None:
        """Atomically write state.pt (every rank must call it: the ranks' own states are gathered to rank 0)."""
        ranks = [self._rank_state()]
        if self.env.world > 1:
            ranks = [None] * self.env.world if self.env.main else None
            dist.gather_object(self._rank_state(), ranks, dst=0)
        if not self.env.main:
            return
        state = {"version": STATE_VERSION, "stage_idx": stage_idx, "step": step, "student": student.state_dict(),
                 "student_config": student.config(), "opt": opt.state_dict(), "ranks": ranks,
                 "stages": copy.deepcopy(self.run["stages"]), "seconds": seconds, "kd_hist": kd_hist[-50:],
                 "first_kd": self.first_kd, "g_steps": self.g_steps, "timing": dict(self.timing)}
        if self.uses_g:
            state.update(gen=self.gen.state_dict(), gen_ema=self.gen_ema.state_dict(),
                         gen_opt=self.gen_opt.state_dict())
        atomic_torch_save(state, self._state_path())

    def _load_state(self) -> dict | None:
        """Return the saved state (restoring this rank's generators, buffer and the generator G), or None."""
        p = self._state_path()
        if not p.exists():
            return None
        try:
            state = torch.load(p, map_location=self.env.device, weights_only=True)
        except Exception as exc:
            raise SRShrinkError(f"{p}: cannot read the saved state ({str(exc)[:100]}); rerun with --force.") \
                from None
        if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
            raise SRShrinkError(f"{p}: saved by another sr-shrink version (state format "
                                f"{state.get('version', 1) if isinstance(state, dict) else '?'}, this one reads "
                                f"{STATE_VERSION}); finish the run with that version or rerun with --force.")
        ranks = state["ranks"]
        if len(ranks) != self.env.world:
            raise SRShrinkError(f"{self.run_dir}: this run was started with {len(ranks)} process(es), not "
                                f"{self.env.world}; resume it with the same number (torchrun --nproc_per_node).")
        if self.uses_g and "gen" in state:
            self.gen.load_state_dict(state["gen"])
            self.gen_ema.load_state_dict(state["gen_ema"])
            self.gen_opt.load_state_dict(state["gen_opt"])
        mine = ranks[self.env.rank]
        self.g.set_state(mine["rng"].cpu())
        torch.set_rng_state(mine["torch_rng"].cpu())
        self.buffer.load_state_dict(mine["buffer"], self.env.device)
        self.g_steps = state.get("g_steps", 0)
        self.timing.update(state.get("timing", {}))
        return state

    # ---------------------------------------------------------------- --time-budget
    def _probe_cost(self, student: SRStudent) -> float:
        """Return the measured seconds per student step of ``student`` (refills and generator steps included
        at their rates); runs a few real steps, so call it between :meth:`_snapshot` and :meth:`_restore`."""
        cfg = self.cfg
        opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
        g_seconds = []
        for i in range(PROBE_WARMUP + 2 if self.uses_g else 0):  # generator steps, timed on their own
            t0 = time.perf_counter()
            self._generator_step(student)
            if i >= PROBE_WARMUP:
                g_seconds.append(time.perf_counter() - t0)
        n = max(PROBE_STEPS, 2 * cfg.reuse)
        for i in range(PROBE_WARMUP + n):  # student steps with their refills, as the stage's loop runs them
            if i == PROBE_WARMUP:
                t0 = time.perf_counter()
            if cfg.mode != "generator" and i % cfg.reuse == 0:
                self._refill()
            self._student_step(student, student, opt)
        cost = (time.perf_counter() - t0) / n
        if g_seconds:
            cost += sum(g_seconds) / len(g_seconds) / cfg.student_steps_per_g
        return cost

    def _snapshot(self) -> dict:
        """Return everything a probe changes (random generators, buffer, generator G, counters)."""
        snap = {"rng": self.g.get_state(), "torch_rng": torch.get_rng_state(), "buffer": self.buffer.state_dict(),
                "g_steps": self.g_steps, "timing": dict(self.timing), "first_kd": getattr(self, "first_kd", None)}
        if self.uses_g:
            snap.update(gen=copy.deepcopy(self.gen.state_dict()), gen_ema=copy.deepcopy(self.gen_ema.state_dict()),
                        gen_opt=copy.deepcopy(self.gen_opt.state_dict()))
        return snap

    def _restore(self, snap: dict) -> None:
        """Put back what :meth:`_snapshot` returned, so the run goes on as if no probe had run."""
        self.g.set_state(snap["rng"])
        torch.set_rng_state(snap["torch_rng"])
        self.buffer = ReplayBuffer(self.buffer.capacity)
        if snap["buffer"]["x"] is not None:
            self.buffer.load_state_dict(snap["buffer"], self.env.device)
        self.g_steps, self.timing, self.first_kd = snap["g_steps"], snap["timing"], snap["first_kd"]
        if self.uses_g:
            self.gen.load_state_dict(snap["gen"])
            self.gen_ema.load_state_dict(snap["gen_ema"])
            self.gen_opt.load_state_dict(snap["gen_opt"])

    def _plan_time_budget(self, student: SRStudent, blocks: list[int]) -> None:
        """Measure the step cost of the first and last stage's students and set ``steps_per_stage`` so the
        whole run fits ``cfg.time_budget`` minutes (the same steps for every stage); record the plan in
        run.json under ``time_budget``. The probe's steps are thrown away: the run then starts as it would
        have without them."""
        cfg, env = self.cfg, self.env
        snap = self._snapshot()
        try:
            first = copy.deepcopy(student)
            cost = {blocks[0]: self._probe_cost(first)}
            last = first
            while last.n_blocks < blocks[-1]:
                last = grow(last, self.g).to(env.device)
            if blocks[-1] != blocks[0]:
                cost[blocks[-1]] = self._probe_cost(last)
            eval_s = 0.0
            if self.eval_pairs and env.main:
                t0 = time.perf_counter()
                shipped = collapse(last) if last.block == "rep" else last
                evaluate_model(shipped, self.eval_pairs, self.scale)
                evaluate_model(shipped, self.fidelity_pairs, self.scale)
                eval_s = time.perf_counter() - t0
        finally:
            self._restore(snap)
        b0, b1 = blocks[0], blocks[-1]
        cost[b1] = max(cost[b1], cost[b0])  # a bigger student is not cheaper (timer noise aside)
        per_stage = [cost[b0] if b1 == b0 else cost[b0] + (cost[b1] - cost[b0]) * (b - b0) / (b1 - b0)
                     for b in blocks]
        setup = time.time() - self.started
        left = cfg.time_budget * 60 - setup - eval_s * len(blocks)
        # 20 % and 5 s: checkpoints (state.pt with the replay buffer, fsync'd), growth, the stage's first refill,
        # writing run.json; a 2-minute budget on a quiet machine still overran by 6 % with 10 % and no fixed part
        steps = int((left - 5.0) * 0.8 / sum(per_stage))
        if env.world > 1:  # every rank trains the same number of steps: rank 0's plan
            box = [steps]
            dist.broadcast_object_list(box, src=0)
            steps = box[0]
        if steps < 1:
            need = (setup + eval_s * len(blocks) + sum(per_stage) * 10) / 60
            raise SRShrinkError(f"--time-budget {cfg.time_budget:g}: setting up took {setup:.0f} s and a step of all "
                                f"{len(blocks)} stages takes {sum(per_stage):.2f} s; give at least {need:.1f} minutes "
                                "(or fewer stages).")
        self.cfg = replace(cfg, steps_per_stage=steps)
        self.run["config"] = self.cfg.to_dict()
        self.run["time_budget"] = {
            "minutes": cfg.time_budget, "setup_seconds": round(setup, 2),
            "step_seconds": {str(b): round(c, 4) for b, c in zip(blocks, per_stage)},
            "eval_seconds_per_stage": round(eval_s, 2), "steps_per_stage": steps,
            "planned_seconds": round(setup + eval_s * len(blocks) + steps * sum(per_stage), 1)}

    def _check_same_run(self, old: dict) -> None:
        """Raise an SRShrinkError naming the first difference between ``old`` run.json and this run."""
        where = f"{self.run_dir}: "
        tip = "resume with the same options or pass --force to start over."
        old_teacher, new_teacher = old.get("teacher", {}), self.run["teacher"]
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
                raise SRShrinkError(f"{where}was distilled with --res-scale {show(old_res)}, not {show(new_res)}; "
                                    f"{tip}")
        old_cfg, new_cfg = old.get("config", {}), self.cfg.to_dict()
        for key in RESUME_KEYS:
            if key == "teacher_dtype" and key in old_cfg:  # auto and what it resolved to are the same run
                dev = self.env.device
                if resolve_teacher_dtype(old_cfg[key], dev) == resolve_teacher_dtype(new_cfg[key], dev):
                    continue
            if key in old_cfg and old_cfg[key] != new_cfg[key]:
                raise SRShrinkError(f"{where}was started with {flag(key)} {_show(key, old_cfg)}, not "
                                    f"{_show(key, new_cfg)}; {tip}")

    def _write_run(self) -> None:
        if self.env.main:
            self.rundir.write_run(self.run)

    # ---------------------------------------------------------------- stages
    def run_stages(self, resume: bool, progress=None) -> dict:
        """Train every stage not already finished; return the run.json dict."""
        cfg, env = self.cfg, self.env
        blocks = cfg.stages()
        state = None
        torch.manual_seed(cfg.seed)
        student = SRStudent(cfg.scale, blocks[0], cfg.channels, cfg.block).to(env.device)  # before _load_state
        old = self.rundir.run if resume and self.rundir.run else None
        adopt = {}  # what a resumed run takes over from the run it continues
        if old is not None and cfg.time_budget and "time_budget" in old:  # go on with the plan made at the start
            adopt["steps_per_stage"] = old.get("config", {}).get("steps_per_stage", cfg.steps_per_stage)
            self.run["time_budget"] = old["time_budget"]
        if old is not None and "pool" not in old.get("config", {"pool": 0}):  # a run from before the pool: it
            adopt["pool"] = 0  # labelled fresh images for every batch, and goes on doing so
        if old is not None and "targets" not in old.get("config", {"targets": "raw"}):  # from before --targets:
            adopt["targets"] = "raw"  # its KD targets were never clamped, and stay so
        if adopt:
            self.cfg = cfg = replace(cfg, **adopt)
            self.run.update(config=cfg.to_dict(), recipe=cfg.recipe())
        if old is not None:
            self._check_same_run(old)
            self.run["stages"] = old.get("stages", [])
            if "resumed_from" in old:
                self.run["resumed_from"] = old["resumed_from"]
        if resume:
            state = self._load_state()
            if state is not None:  # the state's list of finished stages is the authority on where to go on
                self.run["stages"] = state["stages"]
        self.run["stages"] = [s for s in self.run["stages"] if (self.run_dir / s["checkpoint"]).exists()]
        done = len(self.run["stages"])
        if state is not None and state["stage_idx"] != done:
            state = None  # a stale state (its stage's checkpoint is gone): start that stage afresh
        if (old is not None or state is not None) and done < len(blocks):
            step = state["step"] if state is not None else 0
            picked_up = {"stage": done + 1, "step": step}
            if cfg.block == "rep" and done and state is None:
                picked_up["from_collapsed"] = True  # the training form was lost: see to_rep
            self.run["resumed_from"] = [*self.run.get("resumed_from", []), picked_up]
        if self.eval_pairs and env.main:
            tr, self.fidelity_pairs = teacher_references(self.teacher, self.eval_pairs, self.scale)
            br = evaluate_bicubic(self.eval_pairs, self.scale)
            self.run.update(teacher_psnr_y=tr["psnr_y"], teacher_ssim_y=tr["ssim_y"],
                            bicubic_psnr_y=br["psnr_y"], bicubic_ssim_y=br["ssim_y"])
        if done < len(blocks):
            self._build_pool()
            if cfg.time_budget and "time_budget" not in self.run:
                self._plan_time_budget(student, blocks)
                cfg = self.cfg
        self._write_run()
        if done and cfg.block == "rep" and state is not None:  # stage checkpoints are collapsed: the training
            student = SRStudent(**state["student_config"]).to(env.device)  # form of the last stage is in state.pt
            student.load_state_dict(state["student"])
        elif done:
            student, _ = load_student(self.run_dir / self.run["stages"][-1]["checkpoint"])
            student = (to_rep(student) if cfg.block == "rep" else student).to(env.device)
        for idx in range(done, len(blocks)):
            if state is not None and state["step"] > 0:  # mid-stage: the saved student, no growth (no RNG draw)
                student = SRStudent(**state["student_config"]).to(env.device)
                student.load_state_dict(state["student"])
            while student.n_blocks < blocks[idx]:
                student = grow(student, self.g).to(env.device)
            student = self._train_stage(idx, blocks[idx], student, state, progress)
            state = None
        self.run["complete"] = True
        self.run["timing_seconds"] = {k: round(v, 2) for k, v in self.timing.items()}
        self._write_run()
        if self.env.main:
            self._state_path().unlink(missing_ok=True)
        return self.run

    def _train_stage(self, idx: int, n_blocks: int, student: SRStudent, state: dict | None, progress):
        cfg, env = self.cfg, self.env
        start, seconds, kd_hist = 0, 0.0, []
        self.first_kd = None
        if env.channels_last:
            student = student.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(student.parameters(), lr=cfg.lr)
        mid_stage = state is not None and state["stage_idx"] == idx and state["step"] > 0
        if mid_stage:  # run_stages already put the saved student in place
            opt.load_state_dict(state["opt"])
            start, seconds, kd_hist = state["step"], state["seconds"], list(state["kd_hist"])
            self.first_kd = state.get("first_kd")
        s_ddp = DDP(student) if env.world > 1 else student
        stage_no = idx + 1
        task = progress.add_task(f"stage {stage_no} ({n_blocks} blk)", total=cfg.steps_per_stage, completed=start,
                                 kd=float("nan"), g="") if progress else None
        t_start = time.time()
        g_parts: dict[str, float] = {}
        if not mid_stage:  # a resumed stage goes on with its saved buffer, as the uninterrupted run did
            self._refill()
        for step in range(start, cfg.steps_per_stage):
            lr = cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / cfg.steps_per_stage)))
            for group in opt.param_groups:
                group["lr"] = lr
            try:
                if self.uses_g and step % cfg.student_steps_per_g == 0:
                    g_parts = self._generator_step(student)
                if cfg.mode != "generator" and step % cfg.reuse == 0:
                    self._refill()
                kd = self._student_step(student, s_ddp, opt)
            except FloatingPointError as exc:
                raise SRShrinkError(
                    f"stage {stage_no} step {step}: the {exc} loss became NaN/inf; stopped. The last good checkpoint "
                    f"is kept in {self.run_dir} (state.pt); resume with a lower --lr or --g-lr.") from None
            kd_hist.append(kd)
            if self.first_kd is None and len(kd_hist) == min(10, cfg.steps_per_stage):
                self.first_kd = sum(kd_hist) / len(kd_hist)
            if task is not None:
                progress.update(task, advance=1, kd=sum(kd_hist[-20:]) / len(kd_hist[-20:]),
                                g=" ".join(f"{k}={v:.3g}" for k, v in g_parts.items()))
            if (step + 1) % cfg.save_every == 0 and step + 1 < cfg.steps_per_stage:
                self._save_state(idx, step + 1, student, opt, seconds + time.time() - t_start, kd_hist)
        seconds += time.time() - t_start
        return self._finish_stage(idx, n_blocks, student, opt, seconds, kd_hist)

    def _finish_stage(self, idx, n_blocks, student, opt, seconds, kd_hist) -> SRStudent:
        """Evaluate and save the stage's (collapsed) student and the resumable state; return the training form."""
        cfg = self.cfg
        student = student.to(memory_format=torch.contiguous_format)
        shipped = collapse(student) if student.block == "rep" else student  # what stage_XX.pt holds
        name = f"stage_{idx + 1:02d}.pt"
        entry = {"stage": idx + 1, "n_blocks": n_blocks, "channels": cfg.channels,
                 "params": sum(p.numel() for p in shipped.parameters()), "checkpoint": name,
                 "steps": cfg.steps_per_stage, "first_kd_loss": round(self.first_kd or float("nan"), 6),
                 "final_kd_loss": round(sum(kd_hist[-20:]) / max(1, len(kd_hist[-20:])), 6),
                 "seconds": round(seconds, 2)}
        if shipped is not student:
            entry["train_params"] = sum(p.numel() for p in student.parameters())
        if self.eval_pairs and self.env.main:
            res = evaluate_model(shipped, self.eval_pairs, self.scale)
            entry.update(val_psnr_y=res["psnr_y"], val_ssim_y=res["ssim_y"],
                         **fidelity(evaluate_model(shipped, self.fidelity_pairs, self.scale)))
            student.train()
        if self.env.main:
            extra = {"stage": idx + 1, "n_blocks": n_blocks, "scale": cfg.scale,
                     "val_psnr_y": entry.get("val_psnr_y"), "mode": cfg.mode}
            if shipped is not student:
                extra["train_block"] = student.block
            save_model_checkpoint(shipped, "student", shipped.config(), self.run_dir / name, extra=extra)
            if self.uses_g:
                save_generator(self.gen_ema, self.run_dir / "generator.pt")
        self.run["stages"].append(entry)
        self._save_state(idx + 1, 0, student, opt, 0.0, [])  # before run.json: the state lists this stage as done
        self._write_run()
        if self.env.world > 1:
            dist.barrier()
        return student


def _show(key: str, cfg: dict) -> str:
    """Return how a config value reads on the command line (``--stages`` shows A:B)."""
    if key in ("stage_start", "stage_end"):
        return f"{cfg.get('stage_start')}:{cfg.get('stage_end')}"
    return str(cfg.get(key))
