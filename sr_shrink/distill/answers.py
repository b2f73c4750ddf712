"""Does the teacher answer the run's synthetic inputs with an upscale of them? A check before the first step.

Fed inputs unlike anything it was trained on, a teacher can answer with images that are no upscale of them, and a
student fitted to those answers learns no upscaling: on uniform noise SPAN x2's raw output spans about -110..+125
and its students end at 13.8 dB, Real-ESRGAN anime answers with a bright flat image (students at 14.2 dB of
fidelity), while the same teachers answer dead leaves with a sharpened upscale (BENCHMARKS.md, section 17).

:func:`far_answers` measures, for each synthetic source of a run, the mean-square distance between the teacher's
answer (clamped to [0, 1], as the KD targets are) and the bicubic upscale of the input, on :data:`PATCHES` seeded
patches of the run's LR patch size; :func:`answer_warning` turns the sources farther than :data:`FAR` into one
``warning:`` line. The threshold and the distances of the panel's teachers are in BENCHMARKS.md, section 19.
"""

from __future__ import annotations

import torch

from ..resize import upscale
from .grown import render_mix

FAR = 0.03  # mean-square distance (RGB, [0, 1]) above which a source's answers are called no upscale
PATCHES = 8


@torch.no_grad()
def answer_distance(teacher: torch.nn.Module, x: torch.Tensor) -> float:
    """Return the mean-square distance between ``teacher``'s answer to ``x`` (clamped to [0, 1]) and the bicubic
    upscale of ``x`` by the teacher's ``scale``."""
    y = teacher(x).float().clamp(0, 1)
    return float(((y - upscale(x, teacher.scale).clamp(0, 1)) ** 2).mean())


def far_answers(teacher: torch.nn.Module, kinds: list[str], patch: int, seed: int = 0) -> dict[str, float]:
    """Return {source: distance} (:func:`answer_distance`) for each synthetic source in ``kinds``, on
    :data:`PATCHES` patches of side ``patch`` drawn with ``seed`` (the teacher on the CPU, in float32; a
    teacher-grown source's patches grown by the same teacher, :mod:`.grown`)."""
    out = {}
    for kind in kinds:
        x = render_mix([kind], PATCHES, patch, torch.Generator().manual_seed(seed),
                       lambda z: teacher(z).float().clamp(0, 1), teacher.scale)
        out[kind] = round(answer_distance(teacher, x), 4)
    return out


def answer_warning(distances: dict[str, float], mode: str) -> str | None:
    """Return one ``warning:`` line naming the sources whose distance exceeds :data:`FAR`, or None."""
    far = {k: d for k, d in distances.items() if d > FAR}
    if not far:
        return None
    what = ", ".join(f"{k} ({d:.3f})" for k, d in far.items())
    fix = ("drop it from --synthetic" if mode == "datafree" else "use --mode datafree or deadleaves")
    return (f"warning: the teacher does not answer the {what} inputs with an upscale of them (mean-square distance "
            f"from their bicubic upscale above {FAR}); a student learns little upscaling from such answers: "
            f"{fix}.")
