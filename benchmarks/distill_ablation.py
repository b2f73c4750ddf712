"""Reproduce the distillation quality table: final-stage Y-PSNR per mode / recipe variant, over seeds.

Each variant is one ``sr-shrink distill`` configuration run with the same student-step budget; the script
prints a markdown table (mean, spread over seeds, per-stage means) and writes JSON next to the runs.

    python benchmarks/distill_ablation.py --data data/train --seeds 0 1 2 --steps 250 --out runs/ablation
    python benchmarks/distill_ablation.py --data data/train --seeds 0 1 2 --steps 250 --out runs/levers \
        --variants "datafree g=latent" "datafree mix 0.25" ...
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

# name -> DistillConfig overrides (the levers of the ablation)
VARIANTS = {
    # input sources, each a --mode of its own
    "noise": dict(mode="noise"),
    "pink": dict(mode="pink"),
    "deadleaves": dict(mode="deadleaves"),
    "generator (paper)": dict(mode="generator", g_kind="latent", reuse=1, w_div=0.0, w_nat=0.0, g_warmup=0,
                              student_steps_per_g=5),
    "generator-refine": dict(mode="generator"),
    "datafree (default)": dict(mode="datafree"),
    "data (KD on photos)": dict(mode="data"),
    "data-hr (GT on photos)": dict(mode="data", data_target="hr"),
    # levers, each one change to the default recipe
    "datafree g=latent": dict(mode="datafree", g_kind="latent"),
    "datafree mix 0.25": dict(mode="datafree", mix=0.25),
    "datafree mix 0.75": dict(mode="datafree", mix=0.75),
    "datafree dl+pink": dict(mode="datafree", synthetic="deadleaves,pink", mix=0.75),
    "datafree no G warm-up": dict(mode="datafree", g_warmup=0),
    "datafree no priors": dict(mode="datafree", w_div=0.0, w_nat=0.0),
    "datafree w_R 10": dict(mode="datafree", w_r=10.0),
    "datafree 50 steps/G": dict(mode="datafree", student_steps_per_g=50),
    "datafree charbonnier": dict(mode="datafree", kd_loss="charbonnier"),
    "datafree reuse 1": dict(mode="datafree", reuse=1),
    # issue 11: cost levers for big teachers
    "datafree no pool": dict(mode="datafree", pool=0),
    "datafree reuse 4": dict(mode="datafree", reuse=4),
    "datafree 20 steps/G": dict(mode="datafree", student_steps_per_g=20),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--data", default=str(REPO / "data" / "train"))
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS)[:8], help="names from VARIANTS")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr-patch", type=int, default=0, help="LR patch side [default: sr-shrink's for the scale]")
    ap.add_argument("--stages", default="1:4")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "ablation")
    ap.add_argument("--summarize-only", action="store_true",
                    help="only tabulate the finished runs already in --out (e.g. after an interrupted sweep)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a, b = (int(v) for v in args.stages.split(":"))
    results: dict[str, list[dict]] = {}
    for name in args.variants:
        for seed in args.seeds:
            slug = "".join(c if c.isalnum() else "_" for c in name)
            if args.summarize_only:
                f = args.out / f"{slug}_s{seed}" / "run.json"
                run = json.loads(f.read_text()) if f.exists() else {}
                if run.get("complete"):
                    results.setdefault(name, []).append(run)
                continue
            cfg = DistillConfig(stage_start=a, stage_end=b, steps_per_stage=args.steps, seed=seed,
                                data_dir=args.data, lr_patch=args.lr_patch, **VARIANTS[name])
            t0 = time.time()
            run = distill(args.teacher, args.out / f"{slug}_s{seed}", cfg, force=True, quiet=True,
                          device="cpu", eval_images=args.eval_images)
            run["wall_seconds"] = time.time() - t0
            (args.out / f"{slug}_s{seed}" / "run.json").write_text(json.dumps(run, indent=2))
            results.setdefault(name, []).append(run)
            print(f"{name} seed {seed}: " + " ".join(f"{s['val_psnr_y']:.3f}" for s in run["stages"])
                  + f"  ({run['wall_seconds']:.0f} s)", flush=True)
    first = next(iter(results.values()))[0]
    lines = [f"teacher {first['teacher_psnr_y']:.3f} dB, bicubic {first['bicubic_psnr_y']:.3f} dB (Y-PSNR, eval split)",
             "", "| variant | final Y-PSNR mean | spread (min-max) | per-stage mean | worst stage drop | "
             "final fidelity Y-PSNR mean (min-max) | steps/s |",
             "|---|---|---|---|---|---|---|"]
    summary = {}
    for name, runs in results.items():
        finals = [r["stages"][-1]["val_psnr_y"] for r in runs]
        name = f"{name} ({len(runs)} seeds)" if len(runs) != len(args.seeds) else name
        n_stages = len(runs[0]["stages"])
        per_stage = [statistics.mean(r["stages"][i]["val_psnr_y"] for r in runs) for i in range(n_stages)]
        sps = statistics.mean(sum(s["steps"] for s in r["stages"]) / sum(s["seconds"] for s in r["stages"])
                              for r in runs)
        drop = max(r["stages"][i - 1]["val_psnr_y"] - r["stages"][i]["val_psnr_y"]
                   for r in runs for i in range(1, n_stages)) if n_stages > 1 else 0.0
        fids = [r["stages"][-1].get("fidelity_psnr_y") for r in runs]
        fid = (f"{statistics.mean(fids):.3f} ({min(fids):.2f}-{max(fids):.2f})" if None not in fids else "-")
        summary[name] = {"final_mean": statistics.mean(finals), "finals": finals, "per_stage": per_stage,
                         "worst_stage_drop": drop, "steps_per_s": sps, "fidelity_finals": fids}
        lines.append(f"| {name} | {statistics.mean(finals):.3f} | {min(finals):.3f}-{max(finals):.3f} | "
                     + " / ".join(f"{v:.2f}" for v in per_stage) + f" | {max(drop, 0):.3f} | {fid} | {sps:.1f} |")
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
