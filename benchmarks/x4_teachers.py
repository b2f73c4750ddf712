"""x3/x4 teachers: which LR patch size gives the best student per minute, and what a big teacher costs.

``patch``: for each LR patch size, short interleaved runs measure the seconds per student step; then one stage is
distilled for the same time budget (steps = budget / seconds per step, so the quality runs themselves do not
depend on the machine's load) and scored (Y-PSNR against the ground truth,
fidelity Y-PSNR against the teacher). Prints a markdown table, mean over seeds.

``big``: distils a random-weight 16.7 M-parameter RRDBNet x4 (Real-ESRGAN x4plus's architecture, 64 feats,
23 blocks, saved as ``{"params_ema": ...}``) for a few steps in a fresh process, and reports wall time, the
time split and the peak RSS of that process.

    python benchmarks/x4_teachers.py patch --teacher sr_shrink/assets/teacher_x4.pt --patches 8 12 16 24 \
        --budget 90 --seeds 0 1 2
    python benchmarks/x4_teachers.py big --steps 20
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from sr_shrink.distill import DistillConfig, distill  # noqa: E402


def _run(teacher: str, out: Path, patch: int, steps: int, seed: int, blocks: int, eval_images: int | None) -> dict:
    cfg = DistillConfig(stage_start=blocks, stage_end=blocks, steps_per_stage=steps, lr_patch=patch, seed=seed)
    t0 = time.perf_counter()
    run = distill(teacher, out, cfg, force=True, quiet=True, device="cpu", eval_images=eval_images)
    run["wall_seconds"] = time.perf_counter() - t0
    return run


def step_costs(args, tmp: Path) -> dict[int, float]:
    """Return {patch: seconds per student step}: the fastest of ``--probe-rounds`` short runs per patch size,
    the sizes interleaved round by round so that a load change hits them alike."""
    best = {patch: float("inf") for patch in args.patches}
    for _ in range(args.probe_rounds):
        for patch in args.patches:
            run = _run(args.teacher, tmp / "probe", patch, args.probe_steps, 0, args.blocks, None)
            best[patch] = min(best[patch], run["stages"][0]["seconds"] / args.probe_steps)
    return best


def patch_sizes(args) -> None:
    """Print the patch-size table (see the module docstring)."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        costs = dict(zip(args.patches, args.per_step_ms)) if args.per_step_ms else None
        costs = {p: ms / 1000 for p, ms in costs.items()} if costs else step_costs(args, Path(tmp))
        print("seconds per step: " + ", ".join(f"{p}: {c * 1000:.1f} ms" for p, c in costs.items()), flush=True)
        for patch in args.patches:
            per_step = costs[patch]
            steps = max(1, int(args.budget / per_step))
            runs = [_run(args.teacher, Path(tmp) / f"p{patch}_s{seed}", patch, steps, seed, args.blocks,
                         args.eval_images) for seed in args.seeds]
            fid = [r["stages"][-1]["fidelity_psnr_y"] for r in runs]
            psnr = [r["stages"][-1]["val_psnr_y"] for r in runs]
            rows.append((patch, per_step, steps, statistics.mean(psnr), statistics.mean(fid), min(fid), max(fid),
                         statistics.mean(r["stages"][-1]["seconds"] for r in runs)))
            print(f"patch {patch}: {per_step * 1000:.0f} ms/step, {steps} steps, fidelity {fid}, psnr {psnr}",
                  flush=True)
        first = runs[0]
    print(f"\nteacher x{first['scale']} {first['teacher_psnr_y']:.3f} dB, bicubic {first['bicubic_psnr_y']:.3f} dB; "
          f"{args.blocks}-block student, {args.budget:.0f} s of student steps per run (steps fixed from the "
          f"measured step cost), seeds {args.seeds}\n")
    print("| LR patch | ms / step | steps in budget | Y-PSNR | fidelity Y-PSNR (min-max) | stage seconds |")
    print("|---:|---:|---:|---:|---|---:|")
    for patch, per_step, steps, psnr, fid, lo, hi, sec in rows:
        print(f"| {patch} | {per_step * 1000:.0f} | {steps} | {psnr:.3f} | {fid:.3f} ({lo:.2f}-{hi:.2f}) | {sec:.0f} |")


def big_teacher(args) -> None:
    """Distil a 16.7 M-parameter RRDBNet x4 for ``--steps`` steps in a child process; print time and peak RSS."""
    from conftest import make_tiny_eval
    from zoo_checkpoints import rrdbnet_x4

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = rrdbnet_x4(Path(tmp), num_filters=64, num_blocks=23).path
        out = Path(tmp) / "run"
        eval_dir = make_tiny_eval(Path(tmp) / "eval", n=2, size=96)  # two 96 px crops: fidelity on a 24 px LR
        cmd = [sys.executable, "-m", "sr_shrink.cli", "distill", str(ckpt), "--out", str(out), "--stages", "2:2",
               "--steps-per-stage", str(args.steps), "--batch", str(args.batch), "--eval", str(eval_dir),
               "--threads", str(args.threads), "--device", "cpu", "--quiet"]
        if args.lr_patch:
            cmd += ["--lr-patch", str(args.lr_patch)]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode:
            sys.exit(r.stderr[-2000:])
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        run = json.loads((out / "run.json").read_text())
    stage = run["stages"][0]
    print(f"RRDBNet x4 64x23 ({run['teacher']['params']:,} params): {args.steps} steps, batch {args.batch}, "
          f"LR patch {run['config']['lr_patch']}: wall {wall:.0f} s (stage {stage['seconds']:.0f} s), "
          f"peak RSS {rss:.0f} MiB, timing {run['timing_seconds']}, fidelity {stage.get('fidelity_psnr_y')}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="part", required=True)
    p = sub.add_parser("patch")
    p.add_argument("--teacher", default=str(REPO / "sr_shrink" / "assets" / "teacher_x4.pt"))
    p.add_argument("--patches", nargs="+", type=int, default=[8, 12, 16, 24])
    p.add_argument("--budget", type=float, default=90.0, help="wall seconds of student training per run")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--probe-steps", type=int, default=30)
    p.add_argument("--probe-rounds", type=int, default=2)
    p.add_argument("--per-step-ms", nargs="+", type=float, help="step costs measured before, one per --patches")
    p.add_argument("--eval-images", type=int, default=None)
    p.add_argument("--threads", type=int, default=2)
    b = sub.add_parser("big")
    b.add_argument("--steps", type=int, default=20)
    b.add_argument("--batch", type=int, default=16)
    b.add_argument("--lr-patch", type=int, default=0)
    b.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    patch_sizes(args) if args.part == "patch" else big_teacher(args)


if __name__ == "__main__":
    main()
