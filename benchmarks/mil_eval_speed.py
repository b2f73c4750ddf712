"""Seconds and peak memory of the Core ML MIL evaluator (what verifies every .mlpackage export) on one input.

Runs :func:`sr_shrink.mil_eval.run_program` of a saved package on one random LR input of each size given, in this
process, and prints per size the seconds of each of ``--repeat`` runs and the process's peak RSS so far. ``--repo``
imports sr_shrink from another checkout (e.g. a ``git worktree`` of an older commit), so two versions of the
evaluator can be timed one after the other on the same machine:

    python benchmarks/mil_eval_speed.py RUN/exports/stage_04_fp16.mlpackage --sizes 256x256 720x1280 [--repo DIR]
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np


def main() -> None:
    """Parse the arguments, run the evaluator on each size and print one line per size."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("package")
    ap.add_argument("--sizes", nargs="+", default=["256x256", "720x1280"], help="LR sizes HxW")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]), help="checkout to import from")
    args = ap.parse_args()
    sys.path.insert(0, args.repo)
    from sr_shrink import mil_eval

    prog = mil_eval.load_program(args.package)
    name = prog.inputs[0]
    rng = np.random.default_rng(0)
    outs = []
    for size in args.sizes:
        h, w = (int(v) for v in size.split("x"))
        x = rng.random((1, 3, h, w), dtype=np.float32)
        secs = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            out = mil_eval.run_program(prog, {name: x})[prog.outputs[0]]
            secs.append(time.perf_counter() - t0)
        outs.append(float(np.asarray(out, dtype=np.float64).sum()))
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(f"{size}: {' '.join(f'{s:.2f}' for s in secs)} s, peak RSS {peak:.2f} GiB, output sum {outs[-1]:.6f}",
              flush=True)


if __name__ == "__main__":
    main()
