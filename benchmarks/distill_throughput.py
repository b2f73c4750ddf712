"""Distillation throughput on this CPU: student steps/s and the share of time per part, per loop variant.

Variants run one after another in one process, each for the same number of student steps on the same
teacher, and are then repeated in a second round (interleaved) so drift on a shared machine does not favour
one. Prints a markdown table with the ratio of each variant to the straightforward loop (reuse 1).

    python benchmarks/distill_throughput.py --teacher sr_shrink/assets/teacher_x2.pt --steps 200 --threads 2
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

from sr_shrink.distill import DistillConfig, distill  # noqa: E402

VARIANTS = {
    "straightforward (fresh teacher batch every step)": dict(reuse=1),
    "reuse each teacher batch 2x (default)": dict(reuse=2),
    "reuse 4x": dict(reuse=4),
    "reuse 2x + channels_last": dict(reuse=2, channels_last=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--mode", default="datafree")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rates: dict[str, list[float]] = {k: [] for k in VARIANTS}
    shares: dict[str, dict] = {}
    for _ in range(args.rounds):
        for name, kw in VARIANTS.items():
            kw = dict(kw)
            cl = kw.pop("channels_last", False)
            cfg = DistillConfig(mode=args.mode, stage_start=4, stage_end=4, steps_per_stage=args.steps, lr_patch=24,
                                **kw)  # 24 px: the default when BENCHMARKS section 3 was measured
            with tempfile.TemporaryDirectory() as tmp:
                t0 = time.perf_counter()
                run = distill(args.teacher, tmp, cfg, eval_dir="none", quiet=True, device="cpu", channels_last=cl)
                wall = time.perf_counter() - t0
            rates[name].append(args.steps / run["stages"][0]["seconds"])
            tim = run["timing_seconds"]
            total = sum(tim.values())
            shares[name] = {k: v / total for k, v in tim.items()}
            print(f"{name}: {rates[name][-1]:.2f} steps/s (wall {wall:.1f} s)", flush=True)
    base = statistics.median(rates[next(iter(VARIANTS))])
    print(f"\n{args.threads} thread(s), mode {args.mode}, student 16 ch x 4 blocks, batch 16, LR patch 24, "
          f"{args.steps} steps x {args.rounds} rounds\n")
    print("| loop | steps/s (median) | vs straightforward | teacher | student | generator | inputs |")
    print("|---|---|---|---|---|---|---|")
    for name in VARIANTS:
        r = statistics.median(rates[name])
        s = shares[name]
        print(f"| {name} | {r:.2f} | {r / base:.2f}x | {s['teacher']:.0%} | {s['student']:.0%} | "
              f"{s['generator']:.0%} | {s['inputs']:.0%} |")


if __name__ == "__main__":
    main()
