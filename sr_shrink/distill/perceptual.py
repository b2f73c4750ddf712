"""``--synthetic auto`` (the default): the synthetic sources of a ``datafree`` run, from what kind of teacher it has.

A teacher that scores less than :data:`~sr_shrink.evaluate.PERCEPTUAL_MARGIN_DB` Y-PSNR above bicubic on photos
is perceptual (GAN-trained), the rule ``bench`` uses to judge students by fidelity. Its students learn it better
from dead leaves and smooth colour fields that the teacher itself upscaled, downscaled back to the LR size
(:data:`PERCEPTUAL_SOURCES`, :mod:`.grown`); on teachers trained for PSNR neither smooth fields nor teacher-grown
images paid, so they keep dead leaves alone (:data:`PSNR_SOURCES`). The panel figures behind both are in
BENCHMARKS.md, sections 19 and 20.

:func:`teacher_kind` scores the teacher and bicubic on centre crops (:data:`CROP` px LR) of the bundled eval photos,
whatever ``--eval`` says (so ``--eval none`` and ``--time-budget`` runs decide alike, at the cost of a few small
teacher forwards). :func:`resolve_synthetic` turns ``auto`` into the sources: as recorded when a run is resumed,
``deadleaves`` without measuring for modes with no synthetic share to choose, else by :func:`teacher_kind`.
run.json records the resolved sources in ``config.synthetic`` and the measurement under ``teacher_kind``.
:func:`resolve_mix` gives a perceptual teacher's ``--time-budget`` run the pool alone (``config.mix`` 1) when
``--mix`` is left out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from ..data import EvalPair, load_eval_set, make_lr
from ..errors import SRShrinkError
from ..evaluate import PERCEPTUAL_MARGIN_DB, evaluate_bicubic, evaluate_model
from ..progress import task
from .config import AUTO_SYNTHETIC, BUDGET_PERCEPTUAL_MIX, DistillConfig
from .sources.label import is_oom

CROP = 48  # LR side of the centre crops the teacher is scored on
QUIET_S = 1.0  # the scoring's progress lines start only once it has taken this long
PSNR_SOURCES = "deadleaves"
PERCEPTUAL_SOURCES = "grown-deadleaves,grown-smooth"  # BENCHMARKS.md section 20


@dataclass
class TeacherKind:
    """The teacher's and bicubic's Y-PSNR on ``images`` crops of the bundled eval photos, and the verdict."""

    teacher_psnr_y: float
    bicubic_psnr_y: float
    images: int
    crop: int = CROP

    @property
    def perceptual(self) -> bool:
        """Return True when the teacher scores less than PERCEPTUAL_MARGIN_DB above bicubic."""
        return self.teacher_psnr_y - self.bicubic_psnr_y < PERCEPTUAL_MARGIN_DB

    def to_dict(self) -> dict:
        """Return the run.json record: the scores, the crops, ``perceptual`` and the sources it chose."""
        return {**asdict(self), "perceptual": self.perceptual,
                "synthetic": PERCEPTUAL_SOURCES if self.perceptual else PSNR_SOURCES}


def centre_crops(scale: int, side: int = CROP) -> list[EvalPair]:
    """Return the bundled eval photos' HR centre crops of ``side * scale`` px with their bicubic LR inputs."""
    out = []
    for p in load_eval_set(scale):
        h, w = p.hr.shape[-2:]
        s = min(side * scale, h // scale * scale, w // scale * scale)
        top, left = (h - s) // 2, (w - s) // 2
        hr = p.hr[..., top:top + s, left:left + s]
        out.append(EvalPair(p.name, hr, make_lr(hr, scale)))
    return out


@torch.no_grad()
def teacher_kind(teacher: torch.nn.Module, scale: int) -> TeacherKind:
    """Return the :class:`TeacherKind` of ``teacher`` (on its own device) from :func:`centre_crops`."""
    pairs = centre_crops(scale)
    with task(f"scoring the teacher on {len(pairs)} photo crops (PSNR-trained or perceptual?)", total=len(pairs),
              quiet_s=QUIET_S) as advance:  # a second or more on a large teacher, nothing to show on a small one
        t = evaluate_model(teacher, pairs, scale, advance)["psnr_y"]
    b = evaluate_bicubic(pairs, scale)["psnr_y"]
    return TeacherKind(round(float(t), 4), round(float(b), 4), len(pairs))


def resolve_synthetic(cfg: DistillConfig, teacher: torch.nn.Module, old: dict | None) -> tuple[DistillConfig,
                                                                                            TeacherKind | None]:
    """Return (``cfg`` with ``synthetic`` resolved when it is ``auto``, the measurement behind it or None).

    A resumed run goes on with the sources its run.json recorded; a mode without a synthetic share to choose
    (anything but ``datafree`` with ``mix`` > 0) gets :data:`PSNR_SOURCES` unmeasured."""
    if cfg.synthetic != AUTO_SYNTHETIC:
        return cfg, None
    recorded = ((old or {}).get("config") or {}).get("synthetic")
    if isinstance(recorded, str) and recorded != AUTO_SYNTHETIC:
        return replace(cfg, synthetic=recorded), None
    if cfg.mode != "datafree" or cfg.mix == 0:
        return replace(cfg, synthetic=PSNR_SOURCES), None
    try:
        kind = teacher_kind(teacher, cfg.scale)
    except Exception as exc:
        if not is_oom(exc):
            raise
        raise SRShrinkError(f"the teacher ran out of memory on {CROP} px crops of the bundled photos, which "
                            f"--synthetic auto scores it on; pass --synthetic {PSNR_SOURCES} (or "
                            f"{PERCEPTUAL_SOURCES} for a GAN-trained teacher) to skip that, or use a device with "
                            "more memory.") from None
    return replace(cfg, synthetic=PERCEPTUAL_SOURCES if kind.perceptual else PSNR_SOURCES), kind


def resolve_mix(cfg: DistillConfig, kind: TeacherKind | None) -> DistillConfig:
    """Return ``cfg`` with ``mix`` :data:`~.config.BUDGET_PERCEPTUAL_MIX` (the labelled pool alone, no generator)
    when ``--mix`` was left out, the run has a ``--time-budget`` and ``kind`` (:func:`resolve_synthetic`'s
    measurement) found a perceptual teacher; else ``cfg`` as it is. At equal minutes the pool alone, 5-9x cheaper
    per step than the generator's game on those teachers, gave their students +0.36 and +0.82 dB of fidelity at 3
    seeds, while on PSNR-trained teachers it stayed within -0.05 to +0.08 dB of the game (BENCHMARKS.md section
    39)."""
    if cfg.mix_auto and cfg.time_budget and kind is not None and kind.perceptual:
        return replace(cfg, mix=BUDGET_PERCEPTUAL_MIX)
    return cfg
