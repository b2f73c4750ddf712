"""How far each panel teacher's answers to each synthetic source are from an upscale of the inputs (issue 18).

For every teacher of the panel (``benchmarks/teacher_panel.py``'s list) and every synthetic source (plain and
teacher-grown, ``grown-NAME``), the
distance ``distill`` checks before its first step (:func:`sr_shrink.distill.answers.far_answers`: mean-square
distance between the teacher's answer, clamped to [0, 1], and the bicubic upscale of the input; 8 seeded patches
at the distill default LR patch, raised to what the teacher takes) and the share of the raw answer's pixels inside
[0, 1]. Sources above ``answers.FAR`` get the warning.

    python benchmarks/teacher_answers.py --panel ../panel_teachers
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from teacher_panel import TEACHERS, teacher_path  # noqa: E402

from sr_shrink.distill.answers import FAR, PATCHES, far_answers  # noqa: E402
from sr_shrink.distill.config import default_lr_patch  # noqa: E402
from sr_shrink.distill.grown import KINDS, render_mix  # noqa: E402
from sr_shrink.teachers import load_teacher  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--panel", type=Path, required=True, help="folder make_teachers.py wrote the teachers into")
    args = ap.parse_args()
    torch.set_num_threads(1)
    kinds = list(KINDS)  # the synthetic sources and their teacher-grown forms
    print("| teacher | LR patch | " + " | ".join(kinds) + " |\n|---|---:|" + "---:|" * len(kinds))
    for name in TEACHERS:
        teacher = load_teacher(str(teacher_path(name, args.panel)))
        patch = teacher.fit_size(default_lr_patch(teacher.scale))
        dist = far_answers(teacher, kinds, patch)
        cells = []
        for kind in kinds:
            with torch.no_grad():
                x = render_mix([kind], PATCHES, patch, torch.Generator().manual_seed(0),
                               lambda z, t=teacher: t(z).float().clamp(0, 1), teacher.scale)
                y = teacher(x)
            inside = float(((y >= 0) & (y <= 1)).float().mean()) * 100
            mark = "**" if dist[kind] > FAR else ""
            cells.append(f"{mark}{dist[kind]:.4f}{mark} ({inside:.0f} %)")
        print(f"| {name} | {patch} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
