"""int8 calibration inputs for runs without a generator: synthetic images, photos, or the images it is verified on.

A run trained on the labelled pool alone (``--mix 1``: the ``--time-budget`` default on a perceptual teacher,
BENCHMARKS 39) has no generator.pt. Its int8 exports used to calibrate on the bundled eval images, the very images
the export's verification scores. This script exports each stage of such runs to ONNX and TFLite int8 (the default
schemes) with three calibration sources and verifies every file on the same photos ``--verify`` (a folder; by
default five of the bundled eval split, :data:`VERIFY`, copied next to ``--out``):

- ``synthetic``: the run's synthetic sources as run.json records them, at its LR patch size (``--calib synthetic``);
- ``photos``: ``--photos``, a folder of other photos (by default the other five of the eval split);
- ``eval``: the whole bundled eval split, which holds the ``--verify`` photos (what a run without generator.pt gets).

Runs are read only (exported from a copy, as ``benchmarks/int8_panel.py`` does); results go to ``--out`` (JSON
lines) as they come, a rerun skips what is there, and the table of Y-PSNR deltas (file minus the fp32 student) is
printed at the end.

    OMP_NUM_THREADS=1 python benchmarks/calib_source.py --runs ../panel_runs/budget_g/realcugan_x4/pool_5min_s{0,1,2} \
        --out runs/calib/cugan.jsonl
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from int8_panel import export_copy  # noqa: E402

from sr_shrink.data import EVAL_DIR  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402

CALIBS = ("synthetic", "photos", "eval")
VERIFY = ("astronaut.png", "chelsea.png", "dragonfly.png", "ladybird.png", "seeding.png")  # the rest: --photos


def split_eval(folder: Path) -> tuple[Path, Path]:
    """Return (verify, photos): the bundled eval split's :data:`VERIFY` images and the others, copied into
    ``folder``/verify and ``folder``/photos."""
    verify, photos = folder / "verify", folder / "photos"
    for d in (verify, photos):
        d.mkdir(parents=True, exist_ok=True)
    for f in sorted(EVAL_DIR.glob("*.png")):
        shutil.copy(f, (verify if f.name in VERIFY else photos) / f.name)
    return verify, photos


def measure(run: Path, stage: int, target: str, calib: str, verify: Path, photos: Path) -> dict:
    """Return the verification figures of ``run``'s ``stage`` exported to ``target`` int8, calibrated on ``calib``."""
    choice = {"synthetic": "synthetic", "photos": str(photos), "eval": str(EVAL_DIR)}[calib]
    t0 = time.perf_counter()
    e = export_copy(run, target, stage, precision="int8", calib=choice, eval_dir=str(verify))
    v = e["verification"]
    return {"delta": v["delta_psnr_y"], "fp32": v["torch_psnr_y"], "psnr_vs_torch": v["psnr_vs_torch"],
            "seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict], targets: list[str]) -> str:
    """Return the markdown table: one line per teacher and blocks (mean over the runs), one column per target x
    calibration source, then the mean and the count of files where synthetic is at least as good as photos."""
    cols = [(t, c) for t in targets for c in CALIBS]
    lines = ["| teacher | blocks | n | " + " | ".join(f"{t} {c}" for t, c in cols) + " |",
             "|---|---:|---:|" + "---:|" * len(cols)]
    keys = sorted({(r["teacher"], r["blocks"]) for r in rows})
    for teacher, blocks in keys:
        mine = [r for r in rows if (r["teacher"], r["blocks"]) == (teacher, blocks)]
        cells = []
        for c in cols:
            got = [r["delta"] for r in mine if (r["target"], r["calib"]) == c]
            cells.append(f"{statistics.mean(got):+.3f}" if got else "-")
        n = len({r["run"] for r in mine})
        lines.append(f"| {teacher} | {blocks} | {n} | " + " | ".join(cells) + " |")
    means = []
    for c in cols:
        got = [r["delta"] for r in rows if (r["target"], r["calib"]) == c]
        means.append(f"**{statistics.mean(got):+.3f}**" if got else "-")
    lines.append("| **mean** | | | " + " | ".join(means) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=Path, nargs="+", required=True, help="run folders (RUN/stage_XX.pt, run.json)")
    ap.add_argument("--verify", type=Path, help="photos every file is verified on [default: VERIFY of the eval split]")
    ap.add_argument("--photos", type=Path, help="other photos to calibrate on [default: the rest of the eval split]")
    ap.add_argument("--targets", nargs="+", default=["onnx", "tflite"], choices=["onnx", "tflite"])
    ap.add_argument("--calibs", nargs="+", default=list(CALIBS), choices=list(CALIBS))
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if args.verify is None or args.photos is None:
        verify, photos = split_eval(args.out.parent)
        args.verify, args.photos = args.verify or verify, args.photos or photos
    rows = [json.loads(line) for line in args.out.read_text().splitlines()] if args.out.exists() else []
    done = {(r["run"], r["stage"], r["target"], r["calib"]) for r in rows}
    for run in args.runs:
        rd = RunDir.open(run)
        teacher = run.parent.name
        for stage in sorted(rd.stages):
            blocks = rd.stage_record(stage).get("n_blocks", stage)
            for target in args.targets:
                for calib in args.calibs:
                    key = (str(run), stage, target, calib)
                    if key in done:
                        continue
                    r = {"run": str(run), "teacher": teacher, "stage": stage, "blocks": blocks, "target": target,
                         "calib": calib, **measure(run, stage, target, calib, args.verify, args.photos)}
                    print(json.dumps(r), flush=True)
                    with args.out.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    rows.append(r)
    print(table(rows, args.targets))


if __name__ == "__main__":
    main()
