"""Configuration of a distillation run (recorded in run.json, checked on --resume)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

from ..choices import BLOCKS, G_KINDS, KD_LOSSES, MODES, TEACHER_DTYPES
from ..choices import KD_TARGETS as TARGETS
from ..errors import SRShrinkError

__all__ = ["AUTO_SYNTHETIC", "BLOCKS", "BUDGET_PERCEPTUAL_MIX", "DEFAULT_MIX", "MODES", "RECIPE_KEYS", "RESUME_KEYS",
           "TARGETS", "TEACHER_DTYPES", "DistillConfig", "default_lr_patch", "flag"]
RECIPE_KEYS = ("mode", "g_kind", "data_target", "mix", "synthetic",
               "student_steps_per_g", "g_lr", "g_warmup", "w_r", "w_div", "w_nat", "g_ema",
               "kd_loss", "reuse", "lr", "channels", "block", "lr_patch", "batch", "teacher_dtype", "pool", "targets")
# What a resumed run must share with the run it continues (besides the teacher): anything else would make
# run.json describe students that no single recipe produced.
RESUME_KEYS = ("scale", "mode", "stage_start", "stage_end", "stage_step", "steps_per_stage", "time_budget", "channels",
               "seed",
               *(k for k in RECIPE_KEYS if k not in ("mode", "channels")))
# The command-line flag of each field, for messages.
FLAGS = {"stage_start": "--stages", "stage_end": "--stages", "student_steps_per_g": "--student-steps-per-g"}


def flag(name: str) -> str:
    """Return the command-line flag that sets config field ``name`` (e.g. ``--lr-patch`` for ``lr_patch``)."""
    return FLAGS.get(name, "--" + name.replace("_", "-"))


# The default LR patch side per scale. x2: the best student per minute on the bundled teacher (BENCHMARKS.md
# section 7, 3 seeds); 32 px lost on the teacher panel (section 17). x4: 12 px, which beat section 7's 8 px on
# every x4 teacher of the panel at the same steps (section 17, 3 seeds). x3: 12 px, between them, not measured.
DEFAULT_LR_PATCH = {2: 16, 3: 12, 4: 12}


AUTO_SYNTHETIC = "auto"  # --synthetic auto: dead leaves; teacher-grown ones and smooth fields for a perceptual teacher

# --mix left out: the synthetic share of each datafree batch, the rest from the generator. A run with a
# --time-budget whose teacher is perceptual takes the pool alone (1: no generator game, several times cheaper steps;
# resolved with the sources, distill.perceptual.resolve_mix; BENCHMARKS.md section 39).
DEFAULT_MIX, BUDGET_PERCEPTUAL_MIX = 0.5, 1.0


def default_lr_patch(scale: int) -> int:
    """Return the default LR patch side for ``scale`` (``DEFAULT_LR_PATCH``; else 32 // scale, a multiple of 4,
    at least 4)."""
    return DEFAULT_LR_PATCH.get(scale, max(4, (32 // scale) // 4 * 4))


@dataclass
class DistillConfig:
    """Everything that defines a run: the stages, the input source (mode) and the training recipe.

    ``mode``: ``datafree`` (the default recipe: generator samples mixed with dead-leaves images; ``synthetic``
    ``auto`` takes teacher-grown dead leaves and smooth fields for a perceptual teacher, and under a ``time_budget``
    such a teacher's students learn from the labelled pool alone, :mod:`~sr_shrink.distill.perceptual`),
    ``generator`` (the paper's loop alone), ``noise`` / ``pink`` / ``deadleaves`` / ``texleaves`` (synthetic inputs, no
    generator) or ``data`` (real LR patches from ``data_dir``, with the teacher's output as target, or the
    HR ground truth when ``data_target="hr"``).
    """

    scale: int = 2
    mode: str = "datafree"
    stage_start: int = 1
    stage_end: int = 4
    stage_step: int = 1
    steps_per_stage: int = 500
    channels: int = 16
    block: str = "rep"  # re-parameterizable blocks while training, saved collapsed (models.student.collapse); or plain
    batch: int = 16
    lr_patch: int = 0  # 0: default_lr_patch(scale), re-derived when the scale changes (see with_scale)
    lr: float = 1e-3
    kd_loss: str = "l1"  # l1 | charbonnier
    reuse: int = 4  # student steps per fresh (input, teacher output) batch (BENCHMARKS section 10)
    # generator (datafree / generator modes)
    g_kind: str = "refine"  # refine: bounded perturbation of synthetic images; latent: the paper's G(z)
    z_dim: int = 256
    student_steps_per_g: int = 10
    g_lr: float = 1e-3
    g_warmup: int = 50  # generator steps on L_R (+ natural statistics) alone before the adversarial term
    w_r: float = 1.0
    w_div: float = 0.1
    w_nat: float = 1.0
    g_ema: float = 0.99
    mix: float | None = None  # datafree: share of each batch from the synthetic sources, the rest from G (1: no
    # generator at all); None: DEFAULT_MIX, which a budgeted run on a perceptual teacher turns into 1 (mix_auto)
    synthetic: str = "auto"  # datafree: comma-separated synthetic sources sharing the mix equally; auto: by teacher
    data_dir: str | None = None
    data_target: str = "teacher"  # data mode: KD on the teacher's output (teacher) or ground truth (hr)
    seed: int = 0
    save_every: int = 100
    teacher_dtype: str = "auto"  # precision of the teacher's forwards: fp32, bf16/fp16 autocast, or auto (see loop)
    pool: int = 512  # synthetic images labelled once and shared by all stages (distill.pool); 0: fresh every refill
    time_budget: float = 0.0  # minutes for the whole run; > 0 measures the step cost and sets steps_per_stage
    targets: str = "clamp"  # KD targets clamped to [0, 1] (the teacher's value range) or raw (issue 18)
    lr_patch_auto: bool = field(default=False, repr=False)
    mix_auto: bool = field(default=False, repr=False)

    def __post_init__(self) -> None:
        if self.lr_patch == 0:
            self.lr_patch_auto = True
            self.lr_patch = default_lr_patch(self.scale)
        if self.mix is None:
            self.mix_auto = True
            self.mix = DEFAULT_MIX

    def with_scale(self, scale: int) -> DistillConfig:
        """Return a copy for a teacher of ``scale``; an automatic LR patch size is re-derived for that scale."""
        return replace(self, scale=scale, lr_patch=0 if self.lr_patch_auto else self.lr_patch)

    def validate(self) -> DistillConfig:
        """Return self after checking every field; an SRShrinkError naming the flag for the first bad one."""
        ints = dict(scale=(1, 16), stage_start=(1, 256), stage_end=(1, 256), stage_step=(1, 256),
                    steps_per_stage=(1, 10**9), channels=(1, 1024), batch=(1, 4096), lr_patch=(4, 1024),
                    reuse=(1, 10**6), student_steps_per_g=(1, 10**9), z_dim=(1, 65536), g_warmup=(0, 10**9),
                    seed=(0, 2**63 - 1), save_every=(1, 10**9), pool=(0, 10**7))
        for name, (lo, hi) in ints.items():
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise SRShrinkError(f"{flag(name)} {v!r}: must be a whole number from {lo} to {hi}.")
        floats = dict(lr=(0.0, 10.0, True), g_lr=(0.0, 10.0, False), w_r=(0.0, 1e6, True), w_div=(0.0, 1e6, True),
                      w_nat=(0.0, 1e6, True), g_ema=(0.0, 1.0, True), mix=(0.0, 1.0, True),
                      time_budget=(0.0, 1e6, True))
        for name, (lo, hi, lo_ok) in floats.items():
            v = getattr(self, name)
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v <= hi and (
                v >= lo if lo_ok else v > lo)
            if not ok:
                side = f">= {lo:g}" if lo_ok else f"> {lo:g}"
                raise SRShrinkError(f"{flag(name)} {v!r}: must be a finite number {side} and <= {hi:g}.")
        if self.stage_end < self.stage_start:
            raise SRShrinkError(f"--stages {self.stage_start}:{self.stage_end}: the last stage must have at least as "
                                "many blocks as the first, e.g. 1:4.")
        if self.mode not in MODES:
            raise SRShrinkError(f"--mode {self.mode!r}: choose one of {', '.join(MODES)}.")
        if self.teacher_dtype not in TEACHER_DTYPES:
            raise SRShrinkError(f"--teacher-dtype {self.teacher_dtype!r}: choose one of {', '.join(TEACHER_DTYPES)}.")
        if self.block not in BLOCKS:
            raise SRShrinkError(f"--block {self.block!r}: choose {' or '.join(BLOCKS)}.")
        if self.kd_loss not in KD_LOSSES:
            raise SRShrinkError(f"--kd-loss {self.kd_loss!r}: choose {' or '.join(KD_LOSSES)}.")
        if self.targets not in TARGETS:
            raise SRShrinkError(f"--targets {self.targets!r}: choose {' or '.join(TARGETS)}.")
        if self.g_kind not in G_KINDS:
            raise SRShrinkError(f"--g-kind {self.g_kind!r}: choose {' or '.join(G_KINDS)}.")
        return self

    def stages(self) -> list[int]:
        """Return the block counts of the stages, e.g. [1, 2, 3, 4] for 1:4 step 1."""
        return list(range(self.stage_start, self.stage_end + 1, self.stage_step))

    def recipe(self) -> dict:
        """Return the recipe fields (what run.json records as the method used)."""
        d = asdict(self)
        return {k: d[k] for k in RECIPE_KEYS}

    def to_dict(self) -> dict:
        """Return all fields as a JSON-ready dict."""
        d = asdict(self)
        d.pop("lr_patch_auto"), d.pop("mix_auto")
        return d
