"""torch.compile of a teacher for distillation's fixed patch shape: compile time vs time saved per forward.

Times the teacher's no-grad forward at batch 16 and the distill LR patch (fastest of ``--repeats`` after a
warm-up) eagerly and after ``torch.compile`` (inductor, default mode, one fixed shape), and prints the compile
time and how many forwards it takes to pay it back.

    python benchmarks/teacher_compile.py --big --threads 2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from sr_shrink.teachers import load_teacher  # noqa: E402


def best_of(fn, x, repeats: int) -> float:
    """Return the fastest of ``repeats`` timed calls of ``fn(x)``."""
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(x)
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=str(REPO / "sr_shrink/assets/teacher_x4.pt"))
    ap.add_argument("--big", action="store_true", help="a random-weight RRDBNet x4 64x23 instead")
    ap.add_argument("--patch", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.teacher
        if args.big:
            from zoo_checkpoints import rrdbnet_x4

            path = str(rrdbnet_x4(Path(tmp), num_filters=64, num_blocks=23).path)
        teacher = load_teacher(path).eval()
        x = torch.rand(args.batch, 3, args.patch, args.patch, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            teacher(x)
            eager = best_of(teacher, x, args.repeats)
            compiled = torch.compile(teacher, dynamic=False)
            t0 = time.perf_counter()
            compiled(x)
            compile_s = time.perf_counter() - t0
            fast = best_of(compiled, x, args.repeats)
            err = float((compiled(x) - teacher(x)).abs().max())
    gain = eager - fast
    payback = f"{compile_s / gain:.0f} forwards" if gain > 0 else "never"
    name = "RRDBNet x4 64x23 (random weights)" if args.big else Path(args.teacher).name
    print(f"| {name} | batch {args.batch}, {args.patch} px | {eager * 1000:.0f} | {fast * 1000:.0f} | "
          f"{eager / fast:.2f}x | {compile_s:.0f} | {payback} | {err:.1e} |")


if __name__ == "__main__":
    main()
