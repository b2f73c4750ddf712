"""Distillation throughput on this CPU: seconds per student step and the share of time per part, per loop variant.

Variants run one after another in one process, each for the same number of student steps on the same
teacher, and are then repeated in a second round (interleaved) so drift on a shared machine does not favour
one. Prints a markdown table with each variant's speed relative to the straightforward loop (a fresh
teacher batch for every student step, no pool).

The labelled pool (``--pool``) is built once per run and shared by its stages; the table shows its one-time
cost and the per-step cost amortised over a ``--amortise``-stage run (default 4, as ``--stages 1:4``).

    python benchmarks/distill_throughput.py --steps 150 --rounds 2 --threads 2
    python benchmarks/distill_throughput.py --big --steps 30 --rounds 2 --threads 2

``--big``: a random-weight RRDBNet x4 of Real-ESRGAN x4plus's size (64 features, 23 blocks, 16.7 M params, the
official ``params_ema`` layout built through spandrel's class); the script also times one fp32 teacher forward
at batch 16, 24 px LR (same threads) and prints each variant's seconds per step as a multiple of it (issue 11's
yardstick).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from sr_shrink.distill import DistillConfig, distill  # noqa: E402

STRAIGHT = "straightforward (fresh teacher batch every step, no pool)"
VARIANTS = {
    STRAIGHT: dict(reuse=1, pool=0, block="plain"),
    "reuse 2, no pool (the loop before issue 11)": dict(reuse=2, pool=0, block="plain"),
    "reuse 2 + labelled pool": dict(reuse=2, block="plain"),
    "reuse 4 + pool (default)": dict(reuse=4, block="plain"),
    "reuse 2 + pool, 20 student steps per G step": dict(reuse=2, student_steps_per_g=20, block="plain"),
    # issue 12: the re-parameterizable blocks' training cost (the first five rows train plain blocks)
    "straightforward, rep blocks": dict(reuse=1, pool=0, block="rep"),
    "reuse 2 + pool, rep blocks": dict(reuse=2, block="rep"),
}
PARTS = ("teacher", "student", "generator", "inputs")


def teacher_forward_seconds(path: str, repeats: int = 3) -> float:
    """Return the fastest of ``repeats`` fp32 teacher forwards at batch 16, 24 px LR (after one warm-up)."""
    from sr_shrink.teachers import load_teacher

    teacher = load_teacher(path)
    x = torch.rand(16, 3, 24, 24, generator=torch.Generator().manual_seed(0))
    best = float("inf")
    with torch.no_grad():
        teacher(x)
        for _ in range(repeats):
            t0 = time.perf_counter()
            teacher(x)
            best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--big", action="store_true", help="a random-weight 16.7 M-param RRDBNet x4 teacher")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--blocks", type=int, default=4, help="student blocks (one stage)")
    ap.add_argument("--lr-patch", type=int, default=0, help="LR patch [default: sr-shrink's for the scale]")
    ap.add_argument("--amortise", type=int, default=4, help="stages the pool is shared by")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS)[:5])
    ap.add_argument("--mode", default="datafree")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        teacher = args.teacher
        if args.big:
            from zoo_checkpoints import rrdbnet_x4

            teacher = str(rrdbnet_x4(Path(tmp), num_filters=64, num_blocks=23).path)
        fwd = teacher_forward_seconds(teacher) if args.big else None
        per_step: dict[str, list[float]] = {k: [] for k in args.variants}
        pool_s: dict[str, list[float]] = {k: [] for k in args.variants}
        shares: dict[str, dict] = {}
        patch = None
        for _ in range(args.rounds):
            for name in args.variants:
                cfg = DistillConfig(mode=args.mode, stage_start=args.blocks, stage_end=args.blocks,
                                    steps_per_stage=args.steps, lr_patch=args.lr_patch, **VARIANTS[name])
                with tempfile.TemporaryDirectory() as out:
                    run = distill(teacher, out, cfg, eval_dir="none", quiet=True, device="cpu")
                patch = run["config"]["lr_patch"]
                per_step[name].append(run["stages"][0]["seconds"] / args.steps)
                pool_s[name].append(run.get("pool", {}).get("seconds", 0.0))
                tim = run["timing_seconds"]
                total = sum(tim[k] for k in PARTS)
                shares[name] = {k: tim[k] / total for k in PARTS}
                print(f"{name}: {per_step[name][-1] * 1000:.0f} ms/step, pool {pool_s[name][-1]:.1f} s", flush=True)
    base = statistics.median(per_step[args.variants[0]]) if args.variants[0] == STRAIGHT else None
    what = "random-weight RRDBNet x4 64x23 (16.7 M params)" if args.big else (args.teacher or "the bundled teacher")
    print(f"\n{what}, {args.threads} thread(s), mode {args.mode}, student 16 ch x {args.blocks} blocks, batch 16, "
          f"LR patch {patch}, {args.steps} steps x {args.rounds} rounds"
          + (f"; one fp32 teacher forward (batch 16, 24 px LR): {fwd:.2f} s" if fwd else "") + "\n")
    head = "| loop | ms / step (median) | pool build s | ms / step, pool amortised over " \
           f"{args.amortise} stages | vs straightforward |" + (" step / teacher forward |" if fwd else "") \
           + " teacher | student | generator | inputs |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    for name in args.variants:
        s = statistics.median(per_step[name])
        amort = s + statistics.median(pool_s[name]) / (args.amortise * args.steps)
        row = f"| {name} | {s * 1000:.0f} | {statistics.median(pool_s[name]):.1f} | {amort * 1000:.0f} | "
        row += f"{base / amort:.2f}x |" if base else "- |"
        if fwd:
            row += f" {amort / fwd:.3f} |"
        sh = shares[name]
        row += " " + " | ".join(f"{sh[k]:.0%}" for k in PARTS) + " |"
        print(row)


if __name__ == "__main__":
    main()
