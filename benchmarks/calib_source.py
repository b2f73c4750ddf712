"""int8 calibration inputs for runs without a generator: synthetic images, photos, or the images it is verified on.

A run trained on the labelled pool alone (``--mix 1``: the ``--time-budget`` default on a perceptual teacher,
BENCHMARKS 39) has no generator.pt. Its int8 exports used to calibrate on the bundled eval images, the very images
the export's verification scores. This script exports each stage of such runs to ONNX and TFLite int8 (the default
schemes) with three calibration sources and verifies every file on the same photos ``--verify`` (a folder; by
default five of the bundled eval split, :data:`VERIFY`, copied next to ``--out``):

- ``synthetic``: the run's synthetic sources as run.json records them, at its LR patch size (``--calib synthetic``);
- ``photos``: ``--photos``, a folder of other photos (by default the other five of the eval split);
- ``eval``: the whole bundled eval split, which holds the ``--verify`` photos (what a run without generator.pt gets);
- ``grown`` (only when named in ``--calibs``; a screen, not an export option): the run's own sources as it trained
  on them, teacher-grown kinds grown by the run's teacher (loaded from run.json), in place of ``synthetic``'s base
  sources.

Runs are read only (exported from a copy, as ``benchmarks/int8_panel.py`` does); results go to ``--out`` (JSON
lines) as they come, a rerun skips what is there, and the table of Y-PSNR deltas (file minus the fp32 student) is
printed at the end.

    OMP_NUM_THREADS=1 python benchmarks/calib_source.py --runs ../panel_runs/budget_g/realcugan_x4/pool_5min_s{0,1,2} \
        --out runs/calib/cugan.jsonl
    OMP_NUM_THREADS=1 python benchmarks/calib_source.py --runs ../panel_runs/budget_g/realcugan_x4/pool_5min_s0 \
        --calibs grown --targets onnx --out runs/calib/grown.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import torch  # noqa: E402
from int8_panel import export_copy  # noqa: E402

import sr_shrink.export.calib as calib  # noqa: E402
from sr_shrink.data import EVAL_DIR  # noqa: E402
from sr_shrink.distill.grown import render_mix  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402

CALIBS = ("synthetic", "photos", "eval")  # the default columns; "grown" runs only when asked for
GROWN_CHUNK = 128  # patches grown by the teacher per forward
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


@contextlib.contextmanager
def grown_sources(run: Path):
    """Within the block, ``--calib synthetic`` renders ``run``'s recorded sources as it trained on them: each
    teacher-grown kind grown by the run's teacher (what export itself cannot do: it loads no teacher)."""
    rd = RunDir.open(run)
    teacher = rd.load_teacher(rd.scale).net.eval()
    kinds = calib.recorded_sources(rd.record.config or {})

    @torch.no_grad()
    def grown_mix(_base_kinds, n, patch, g):
        return torch.cat([render_mix(kinds, min(GROWN_CHUNK, n - i), patch, g, lambda x: teacher(x).clamp(0, 1),
                                     rd.scale) for i in range(0, n, GROWN_CHUNK)])

    plain = calib.synthetic_mix
    calib.synthetic_mix = grown_mix
    calib._MEMO.clear()  # the memo keys synthetic inputs by kinds and patch, not by the teacher that grew them
    try:
        yield
    finally:
        calib.synthetic_mix = plain
        calib._MEMO.clear()


def measure(run: Path, stage: int, target: str, source: str, verify: Path, photos: Path) -> dict:
    """Return the verification figures of ``run``'s ``stage`` exported to ``target`` int8, calibrated on ``source``."""
    choice = {"synthetic": "synthetic", "grown": "synthetic", "photos": str(photos), "eval": str(EVAL_DIR)}[source]
    t0 = time.perf_counter()
    with grown_sources(run) if source == "grown" else contextlib.nullcontext():
        e = export_copy(run, target, stage, precision="int8", calib=choice, eval_dir=str(verify))
    v = e["verification"]
    return {"delta": v["delta_psnr_y"], "fp32": v["torch_psnr_y"], "psnr_vs_torch": v["psnr_vs_torch"],
            "seconds": round(time.perf_counter() - t0, 1)}


def table(rows: list[dict], targets: list[str]) -> str:
    """Return the markdown table: one line per teacher and blocks (mean over the runs), one column per target x
    calibration source, then the mean and the count of files where synthetic is at least as good as photos."""
    cols = [(t, c) for t in targets for c in (*CALIBS, "grown") if any(r["calib"] == c for r in rows)]
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
    ap.add_argument("--calibs", nargs="+", default=list(CALIBS), choices=[*CALIBS, "grown"])
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
                for source in args.calibs:
                    key = (str(run), stage, target, source)
                    if key in done:
                        continue
                    r = {"run": str(run), "teacher": teacher, "stage": stage, "blocks": blocks, "target": target,
                         "calib": source, **measure(run, stage, target, source, args.verify, args.photos)}
                    print(json.dumps(r), flush=True)
                    with args.out.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    rows.append(r)
    print(table(rows, args.targets))


if __name__ == "__main__":
    main()
