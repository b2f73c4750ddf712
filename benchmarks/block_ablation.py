"""Reproduce the block-variant ablation (issue 12): plain vs re-parameterizable (rep) student blocks.

Each variant is the default ``sr-shrink distill`` recipe with ``--block plain`` or ``--block rep``, same seeds,
same student-step budget, same teacher. Rep runs train multi-branch blocks and save every stage collapsed,
so both variants ship the same inference graph; the script checks that (parameters and MACs of the final
stage checkpoint at a 256x256 input must be equal) and prints a markdown table of the final stage's Y-PSNR
on the eval split and its fidelity to the teacher (fidelity_psnr_y), mean and spread over seeds, and the
paired per-seed gain of rep over plain. JSON and the table are written next to the runs.

    python benchmarks/block_ablation.py --seeds 0 1 2 --steps 500 --out runs/blocks_x2
    python benchmarks/block_ablation.py --teacher OTHER.pt --seeds 0 1 2 --steps 500 --out runs/blocks_other
    python benchmarks/block_ablation.py --steps 5 --seeds 0 --stages 1:2 --eval-images 2 --out /tmp/blocks  # smoke
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.distill import DistillConfig, distill  # noqa: E402
from sr_shrink.models.student import load_student  # noqa: E402
from sr_shrink.teachers import count_macs  # noqa: E402

BLOCKS = ("plain", "rep")
METRICS = ("val_psnr_y", "fidelity_psnr_y")


def _final(run: dict, key: str) -> float:
    return run["stages"][-1].get(key, float("nan"))


def _cost(run_dir: Path, run: dict) -> tuple[int, int]:
    """Return (parameters, MACs at 256x256) of the run's final stage checkpoint (what a phone runs)."""
    model, _ = load_student(run_dir / run["stages"][-1]["checkpoint"])
    return sum(p.numel() for p in model.parameters()), count_macs(model, (256, 256))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="teacher checkpoint (default: the bundled x2 teacher)")
    ap.add_argument("--blocks", nargs="+", default=list(BLOCKS), choices=BLOCKS)
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=500, help="student steps per stage")
    ap.add_argument("--stages", default="1:4")
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--mode", default="datafree")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "block_ablation")
    ap.add_argument("--summarize-only", action="store_true",
                    help="only tabulate the finished runs already in --out (e.g. after an interrupted sweep)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a, b = (int(v) for v in args.stages.split(":"))
    runs: dict[str, dict[int, dict]] = {}
    for block in args.blocks:
        for seed in args.seeds:
            folder = args.out / f"{block}_s{seed}"
            if args.summarize_only:
                f = folder / "run.json"
                run = json.loads(f.read_text()) if f.exists() else {}
                if run.get("complete"):
                    runs.setdefault(block, {})[seed] = run
                continue
            cfg = DistillConfig(stage_start=a, stage_end=b, steps_per_stage=args.steps, seed=seed,
                                channels=args.channels, mode=args.mode, block=block)
            t0 = time.time()
            run = distill(args.teacher, folder, cfg, force=True, quiet=True, device=args.device,
                          eval_images=args.eval_images)
            run["wall_seconds"] = time.time() - t0
            (folder / "run.json").write_text(json.dumps(run, indent=2))
            runs.setdefault(block, {})[seed] = run
            print(f"{block} seed {seed}: Y-PSNR " + " ".join(f"{s['val_psnr_y']:.3f}" for s in run["stages"])
                  + f" | fidelity {_final(run, 'fidelity_psnr_y'):.3f} ({run['wall_seconds']:.0f} s)", flush=True)
    if not runs:
        sys.exit(f"no finished runs in {args.out}")
    first = next(iter(next(iter(runs.values())).values()))
    lines = [f"teacher {first['teacher']['path']}: {first['teacher_psnr_y']:.3f} dB, bicubic "
             f"{first['bicubic_psnr_y']:.3f} dB (Y-PSNR, eval split); stages {args.stages}, {args.steps} steps/stage, "
             f"{args.channels} channels, mode {args.mode}",
             "", "| block | seeds | final Y-PSNR mean | spread (min-max) | fidelity Y-PSNR mean | spread (min-max) "
             "| per-stage Y-PSNR mean | params | GMAC @256 | train s/run |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    summary: dict = {"teacher": first["teacher"], "stages": args.stages, "steps": args.steps, "variants": {}}
    costs = {}
    for block, by_seed in runs.items():
        rs = list(by_seed.values())
        psnr, fid = [_final(r, "val_psnr_y") for r in rs], [_final(r, "fidelity_psnr_y") for r in rs]
        per_stage = [statistics.mean(r["stages"][i]["val_psnr_y"] for r in rs) for i in range(len(rs[0]["stages"]))]
        params, macs = _cost(args.out / f"{block}_s{next(iter(by_seed))}", rs[0])
        costs[block] = (params, macs)
        secs = statistics.mean(sum(s["seconds"] for s in r["stages"]) for r in rs)
        summary["variants"][block] = {"seeds": list(by_seed), "final_psnr_y": psnr, "final_fidelity_psnr_y": fid,
                                      "per_stage_psnr_y": per_stage, "params": params, "macs_256": macs,
                                      "train_seconds": secs}
        lines.append(f"| {block} | {len(rs)} | {statistics.mean(psnr):.3f} | {min(psnr):.3f}-{max(psnr):.3f} | "
                     f"{statistics.mean(fid):.3f} | {min(fid):.3f}-{max(fid):.3f} | "
                     + " / ".join(f"{v:.2f}" for v in per_stage) + f" | {params:,} | {macs / 1e9:.3f} | {secs:.0f} |")
    if "plain" in runs and "rep" in runs:
        if costs["plain"] != costs["rep"]:
            lines.append(f"\nWARNING: the shipped students differ in cost: plain {costs['plain']}, rep {costs['rep']}")
        paired = sorted(set(runs["plain"]) & set(runs["rep"]))
        if paired:
            lines += ["", "| rep - plain (paired by seed) | mean | min | max |", "|---|---|---|---|"]
            for key, label in zip(METRICS, ("final Y-PSNR (dB)", "final fidelity Y-PSNR (dB)")):
                d = [_final(runs["rep"][s], key) - _final(runs["plain"][s], key) for s in paired]
                summary[f"delta_{key}"] = dict(zip(map(str, paired), d))
                lines.append(f"| {label} | {statistics.mean(d):+.3f} | {min(d):+.3f} | {max(d):+.3f} |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
