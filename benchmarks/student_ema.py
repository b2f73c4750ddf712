"""Screen: a weight EMA of the student (issue 18's "weight EMA for long budgets"), through distill's callbacks.

Runs the default recipe (16 ch, ``--stages 2:4 --stage-step 2``) on one teacher and ships, at each stage's end,
the exponential moving average of the student's training-form weights instead of the last weights; the next stage
grows from it. The decay warms up as ``min(decay, (1 + n) / (10 + n))`` over the stage's n steps (TensorFlow's
ExponentialMovingAverage with ``num_updates``), so the average never holds the grown starting point for long.
``--decay 0`` is the default recipe itself (the same students as ``benchmarks/teacher_panel.py``). Not resumable:
a killed screen starts over.

    OMP_NUM_THREADS=1 python benchmarks/student_ema.py TEACHER OUT --steps 300 --seed 0 --decay 0.999
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.distill import Callbacks, DistillConfig, distill  # noqa: E402
from sr_shrink.teachers import load_teacher  # noqa: E402


def ema_callbacks(decay: float) -> Callbacks:
    """Return callbacks that keep an EMA of the student's parameters each stage and load it at the stage's end."""
    box: dict = {}

    def start(idx, student, state):
        box.update(student=student, n=0, ema=[p.detach().clone() for p in student.parameters()])

    @torch.no_grad()
    def step(idx, _step, kd, parts):
        box["n"] += 1
        d = min(decay, (1 + box["n"]) / (10 + box["n"]))
        for e, p in zip(box["ema"], box["student"].parameters()):
            e.mul_(d).add_(p.detach(), alpha=1 - d)

    @torch.no_grad()
    def end(idx, student):
        for e, p in zip(box["ema"], student.parameters()):
            p.copy_(e)

    return Callbacks(stage_start=start, step=step, stage_end=end) if decay > 0 else Callbacks()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("teacher", type=Path)
    ap.add_argument("out", type=Path, help="the run folder (overwritten)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--decay", type=float, default=0.999, help="0: no EMA (the default recipe)")
    args = ap.parse_args()
    scale = load_teacher(str(args.teacher)).scale
    cfg = DistillConfig(scale=scale, stage_start=2, stage_end=4, stage_step=2, steps_per_stage=args.steps,
                        channels=16, seed=args.seed)
    t0 = time.time()
    run = distill(str(args.teacher), args.out, cfg, force=True, quiet=True, device="cpu",
                  callbacks=ema_callbacks(args.decay))
    row = {"teacher": args.teacher.name, "steps": args.steps, "seed": args.seed, "decay": args.decay,
           "psnr_y": [s["val_psnr_y"] for s in run["stages"]],
           "fidelity_psnr_y": [s["fidelity_psnr_y"] for s in run["stages"]], "seconds": round(time.time() - t0)}
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
