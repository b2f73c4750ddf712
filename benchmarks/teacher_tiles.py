"""The teacher's pass over large eval images: in one call per image, or in tiles (distill's and bench's default).

Loads TEACHER and the eval images of DIR at its scale and runs :func:`sr_shrink.evaluate.teacher_references` once,
``--mode tiled`` (the default: images longer than ``TEACHER_TILE`` LR pixels on a side in tiles) or ``--mode
whole`` (one call per image, as before), and prints per image the seconds and the teacher's Y-PSNR, with the
process's peak RSS; ``--save FILE`` keeps the teacher's 8-bit outputs, ``--against FILE`` compares them with a
saved run's (Y-PSNR between the two, the largest difference in 8-bit steps). Run each mode in its own process
for its peak memory:

    /usr/bin/time -f "%M KB" python benchmarks/teacher_tiles.py TEACHER DIR --mode whole --save /tmp/whole.pt
    python benchmarks/teacher_tiles.py TEACHER DIR --mode tiled --against /tmp/whole.pt
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path
from unittest import mock

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink import evaluate  # noqa: E402
from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.metrics import psnr_y  # noqa: E402
from sr_shrink.teachers.load import load_teacher  # noqa: E402


def main() -> None:
    """Parse the arguments, run the teacher's pass and print one line per image."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("teacher")
    ap.add_argument("eval_dir")
    ap.add_argument("--mode", choices=("tiled", "whole"), default="tiled")
    ap.add_argument("--save")
    ap.add_argument("--against")
    args = ap.parse_args()
    teacher = load_teacher(args.teacher)
    scale = teacher.scale
    pairs = load_eval_set(scale, args.eval_dir)
    outputs = {}
    for p in pairs:
        t0 = time.perf_counter()
        tile = 10**9 if args.mode == "whole" else evaluate.TEACHER_TILE
        with mock.patch.object(evaluate, "TEACHER_TILE", tile):
            scores, refs = evaluate.teacher_references(teacher, [p], scale)
        seconds = time.perf_counter() - t0
        outputs[p.name] = refs[0].hr
        tiles = f"tiles of {evaluate.teacher_tile(tuple(p.lr.shape[-2:]))}" if args.mode == "tiled" else "one call"
        line = f"{p.name}: LR {tuple(p.lr.shape[-2:])}, {tiles}, {seconds:.1f} s, teacher Y-PSNR {scores['psnr_y']:.4f}"
        if args.against:
            other = torch.load(args.against)[p.name]
            diff = (outputs[p.name] - other).abs().max().item() * 255
            line += f", vs saved: {psnr_y(outputs[p.name], other, scale):.2f} dB apart, max {diff:.0f} steps"
        print(line, flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    if args.save:
        torch.save(outputs, args.save)


if __name__ == "__main__":
    main()
