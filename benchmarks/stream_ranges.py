"""Per-channel extremes of a student's residual stream on the bundled eval images (issue 20 item 4).

A full-integer int8 file rounds the head conv's output and each block's residual Add at one per-tensor scale, set
by the widest channel. This prints, for the head and every block output of RUN's stage STAGE, the three largest
channel maxima and smallest channel minima, the tensor's range, and the range left if the widest channel on each
side were split in two (outlier channel splitting halves one channel's values).

    OMP_NUM_THREADS=1 python benchmarks/stream_ranges.py ../panel_runs/panel/span_x2/default_datafree_300_s0 2
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.models.student import load_student  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402


@torch.no_grad()
def channel_extremes(student: torch.nn.Module, lrs: list[torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Return {"head" / "block0".. : (per-channel max, per-channel min)} of ``student``'s stream over ``lrs``."""
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def record(_module, _inputs, out):
            a = out.transpose(0, 1).reshape(out.shape[1], -1)
            hi, lo = a.amax(1), a.amin(1)
            if name in seen:
                hi, lo = torch.maximum(seen[name][0], hi), torch.minimum(seen[name][1], lo)
            seen[name] = (hi, lo)
        return record

    handles = [student.head.register_forward_hook(hook("head"))]
    handles += [b.register_forward_hook(hook(f"block{i}")) for i, b in enumerate(student.body)]
    try:
        for x in lrs:
            student(x.unsqueeze(0))
    finally:
        for h in handles:
            h.remove()
    return seen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("stage", type=int)
    args = ap.parse_args()
    rd = RunDir.open(args.run)
    student = load_student(rd.stages[args.stage])[0].eval()
    lrs = [p.lr for p in load_eval_set(rd.scale)]
    for name, (hi, lo) in channel_extremes(student, lrs).items():
        top, bottom = hi.sort(descending=True).values, lo.sort().values
        split = max(float(top[0]) / 2, float(top[1])) - min(float(bottom[0]) / 2, float(bottom[1]))
        print(f"{name}: max {top[:3].numpy().round(2)} | min {bottom[:3].numpy().round(2)} | range "
              f"{float(top[0] - bottom[0]):.2f}, widest channels split: {split:.2f}")


if __name__ == "__main__":
    main()
