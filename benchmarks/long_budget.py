"""Issue 13's long-budget table: data-free vs photos vs dead leaves at 300 and 1500 student steps per stage.

Students 16 ch grown 2 -> 4 blocks (``--stages 2:4 --stage-step 2``), one run per (budget, variant, seed), final-stage
Y-PSNR and fidelity to the teacher on the bundled eval split. ``data`` is KD on the teacher's output on the first
``--photos`` images of ``--data`` (sorted by name), the same photos for every run. Finished runs are kept, so an
interrupted sweep continues where it stopped; ``--summarize-only`` tabulates what is there.

    python benchmarks/long_budget.py --teacher sr_shrink/assets/teacher_x2.pt --out runs/long_x2 --threads 1
    python benchmarks/long_budget.py --teacher sr_shrink/assets/teacher_x4.pt --out runs/long_x4 --threads 1
    python benchmarks/long_budget.py ... --variants "datafree no pool" --budgets 1500    # one lever
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import list_images  # noqa: E402
from sr_shrink.distill import DistillConfig, distill  # noqa: E402

# name -> DistillConfig overrides; the first three are the table, the rest levers on the datafree default
VARIANTS = {
    "datafree": dict(mode="datafree"),
    "data": dict(mode="data"),
    "deadleaves": dict(mode="deadleaves"),
    "datafree no pool": dict(mode="datafree", pool=0),
    "datafree pool 2048": dict(mode="datafree", pool=2048),
    "datafree textured leaves": dict(mode="datafree", synthetic="texleaves"),
    "datafree leaves + textured": dict(mode="datafree", synthetic="deadleaves,texleaves"),
    "texleaves": dict(mode="texleaves"),
    "datafree leaves + smooth": dict(mode="datafree", synthetic="deadleaves,smooth"),
    # the recipe before issues 11-12 (plain blocks, reuse 2, no labelled pool): what the issue measured
    "datafree, old recipe": dict(mode="datafree", block="plain", reuse=2, pool=0),
    "data, old recipe": dict(mode="data", block="plain", reuse=2),
}


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name)


def photo_subset(data: Path, n: int, out: Path) -> Path:
    """Copy the first ``n`` images of ``data`` (by name) into ``out/photos{n}``; return that folder."""
    images = list_images(data)
    if len(images) < n:
        sys.exit(f"error: {data} has {len(images)} images, --photos {n} needs more (python scripts/make_images.py "
                 f"--train {data})")
    folder = out / f"photos{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for p in images[:n]:
        if not (folder / p.name).exists():
            shutil.copy2(p, folder / p.name)
    return folder


def run_one(teacher: str | None, folder: Path, cfg: DistillConfig, eval_images: int | None) -> dict:
    """Distil one configuration into ``folder`` unless a complete run is there; return its run.json dict."""
    f = folder / "run.json"
    if f.exists():
        run = json.loads(f.read_text())
        if run.get("complete") and run["config"]["steps_per_stage"] == cfg.steps_per_stage:
            return run
    t0 = time.time()
    run = distill(teacher, folder, cfg, force=True, quiet=True, device="cpu", eval_images=eval_images)
    run["wall_seconds"] = time.time() - t0
    f.write_text(json.dumps(run, indent=2))
    return run


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f} (1 seed)"
    return f"{statistics.mean(values):.3f} ({min(values):.2f}-{max(values):.2f})"


def summarize(results: dict, budgets: list[int]) -> tuple[list[str], dict]:
    """Markdown lines and a JSON summary of ``results[(variant, budget)] -> [run.json dicts]``."""
    any_run = next(r for runs in results.values() for r in runs)
    lines = [f"teacher {any_run['teacher_psnr_y']:.3f} dB, bicubic {any_run['bicubic_psnr_y']:.3f} dB (Y-PSNR)", "",
             "| variant | " + " | ".join(f"Y-PSNR {b}" for b in budgets) + " | gain | "
             + " | ".join(f"fidelity {b}" for b in budgets) + " | s/run |",
             "|---|" + "---|" * (2 * len(budgets) + 2)]
    summary: dict = {}
    for name in dict.fromkeys(v for v, _ in results):
        psnr = {b: [r["stages"][-1]["val_psnr_y"] for r in results.get((name, b), [])] for b in budgets}
        fid = {b: [r["stages"][-1]["fidelity_psnr_y"] for r in results.get((name, b), [])] for b in budgets}
        secs = [r.get("wall_seconds", 0.0) for b in budgets for r in results.get((name, b), [])]
        lo, hi = psnr[budgets[0]], psnr[budgets[-1]]
        gain = f"{statistics.mean(hi) - statistics.mean(lo):+.3f}" if lo and hi and len(budgets) > 1 else "-"
        lines.append(f"| {name} | " + " | ".join(_cell(psnr[b]) for b in budgets) + f" | {gain} | "
                     + " | ".join(_cell(fid[b]) for b in budgets) + f" | {statistics.mean(secs):.0f} |")
        summary[name] = {"psnr_y": {str(b): psnr[b] for b in budgets},
                         "fidelity_psnr_y": {str(b): fid[b] for b in budgets}}
    df, da = summary.get("datafree"), summary.get("data")
    if df and da:
        lines.append("")
        for b in budgets:
            if df["psnr_y"][str(b)] and da["psnr_y"][str(b)]:
                d = statistics.mean(df["psnr_y"][str(b)]) - statistics.mean(da["psnr_y"][str(b)])
                lines.append(f"- {b} steps per stage: datafree - data = {d:+.3f} dB (goal at the long budget: >= -0.1)")
    return lines, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None, help="teacher checkpoint [default: the bundled x2 teacher]")
    ap.add_argument("--data", type=Path, default=REPO / "data" / "train", help="photos for the data rows")
    ap.add_argument("--photos", type=int, default=5, help="how many of --data's photos the data rows use")
    ap.add_argument("--variants", nargs="+", default=["datafree", "data", "deadleaves"], choices=list(VARIANTS))
    ap.add_argument("--budgets", nargs="+", type=int, default=[300, 1500], help="student steps per stage")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--stages", default="2:4")
    ap.add_argument("--stage-step", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "long_budget")
    ap.add_argument("--summarize-only", action="store_true", help="only tabulate the finished runs in --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    a, b = (int(v) for v in args.stages.split(":"))
    photos = None
    if "data" in {VARIANTS[v]["mode"] for v in args.variants} and not args.summarize_only:
        photos = photo_subset(args.data, args.photos, args.out)
    results: dict[tuple[str, int], list[dict]] = {}
    # seed-major order: an interrupted sweep leaves whole seeds, not whole variants
    for seed in args.seeds:
        for budget in args.budgets:
            for name in args.variants:
                folder = args.out / f"{_slug(name)}_{budget}_s{seed}"
                if args.summarize_only:
                    f = folder / "run.json"
                    run = json.loads(f.read_text()) if f.exists() else {}
                    if run.get("complete"):
                        results.setdefault((name, budget), []).append(run)
                    continue
                cfg = DistillConfig(stage_start=a, stage_end=b, stage_step=args.stage_step, steps_per_stage=budget,
                                    seed=seed, data_dir=str(photos) if photos else None, **VARIANTS[name])
                run = run_one(args.teacher, folder, cfg, args.eval_images)
                results.setdefault((name, budget), []).append(run)
                print(f"{name} {budget} seed {seed}: " + " ".join(f"{s['val_psnr_y']:.3f}" for s in run["stages"])
                      + f" fidelity {run['stages'][-1]['fidelity_psnr_y']:.2f}"
                      + f" ({run.get('wall_seconds', 0):.0f} s)", flush=True)
    if not results:
        sys.exit(f"error: no finished runs in {args.out}")
    lines, summary = summarize(results, args.budgets)
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
