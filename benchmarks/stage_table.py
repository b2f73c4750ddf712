"""Issue 12's before/after table: every stage x runtime x precision of two runs, Y-PSNR and latency, one session.

"before" is a run of plain students exported as sr-shrink exported them before issue 12 (ONNX int8 with int8
activations and full-range weights, head and tail convs int8; no output clamp, TFLite's int8 output range
calibrated); "after" is a run of re-parameterized students (collapsed) exported as sr-shrink exports them now
(uint8 activations, 7-bit weights, float head/tail convs; output clamp, TFLite's int8 output pinned to [0, 1]).
Both runs must share everything else (teacher, seed, steps).

Phase ``export`` writes the files (fixed 256x256 TFLite, free-size ONNX) and scores them on the eval split
(fixed-size graphs run tiled, as ``sr-shrink bench`` does); it can run on a busy machine. Phase ``time`` times
every row of both runs interleaved on one 256x256 input (``bench.measure.time_interleaved``); run it alone.

    python benchmarks/stage_table.py export --before runs/blocks_x2/plain_s0 --after runs/blocks_x2/rep_s0 \
        --out runs/stage_table
    python benchmarks/stage_table.py time --out runs/stage_table --threads 2
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sr_shrink.export.onnx as onnx_export  # noqa: E402
import sr_shrink.export.pipeline as pipeline  # noqa: E402
from sr_shrink.bench.measure import bench_input, quality, time_interleaved  # noqa: E402
from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.export import build_wrapper, export_run  # noqa: E402
from sr_shrink.models.student import load_student  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402
from sr_shrink.runtimes import TorchRunner, open_runner  # noqa: E402

BEFORE_ONNX = onnx_export.Int8Scheme(activations="int8", reduce_range=False, float_tail=True, float_end_convs=False)
FILES = [("onnxruntime", "onnx", "fp32"), ("onnxruntime", "onnx", "int8"), ("litert", "tflite", "fp32"),
         ("litert", "tflite", "int8")]
SIZE = (256, 256)


def _export(run: Path, stage: int, target: str, precision: str, out: Path, before: bool) -> Path:
    """Export one stage the way the arm did; return the file."""
    saved = (pipeline.build_wrapper, onnx_export.to_int8)
    if before:
        pipeline.build_wrapper = functools.partial(build_wrapper, clamp=False)
        onnx_export.to_int8 = functools.partial(saved[1], scheme=BEFORE_ONNX)
    try:
        size = "256x256" if target == "tflite" else None
        return Path(export_run(run, target, stage=stage, precision=precision, out=out, input_size=size)[0]["path"])
    finally:
        pipeline.build_wrapper, onnx_export.to_int8 = saved


def export_phase(args) -> None:
    rows = []
    for arm, run in (("before", args.before), ("after", args.after)):
        rd = RunDir.open(run)
        for stage, ckpt in sorted(rd.stages.items()):
            student, _ = load_student(ckpt)
            pairs = load_eval_set(student.scale, max_images=args.eval_images)
            scores, _ = quality(TorchRunner(student, 1, "cpu", path=ckpt), pairs, student.scale)
            rows.append({"arm": arm, "stage": stage, "runtime": "torch", "precision": "fp32", "path": str(ckpt),
                         "psnr_y": scores["psnr_y"]})
            for runtime, target, precision in FILES:
                path = _export(Path(run), stage, target, precision, args.out / arm, arm == "before")
                scores, _ = quality(open_runner(path, 1), pairs, student.scale)
                rows.append({"arm": arm, "stage": stage, "runtime": runtime, "precision": precision,
                             "path": str(path), "psnr_y": scores["psnr_y"]})
                print(f"{arm} stage {stage} {runtime} {precision}: {scores['psnr_y']:.3f}", flush=True)
    (args.out / "rows.json").write_text(json.dumps(rows, indent=2))


def time_phase(args) -> None:
    rows = json.loads((args.out / "rows.json").read_text())
    x = bench_input(SIZE)
    fns = {}
    for i, r in enumerate(rows):
        if r["runtime"] == "torch":
            fns[i] = TorchRunner(load_student(r["path"])[0], args.threads, "cpu", path=Path(r["path"]))
        else:
            fns[i] = open_runner(r["path"], args.threads)
    times = time_interleaved(fns, x, repeats=args.repeats, warmup=2, rounds=args.rounds)
    for i, r in enumerate(rows):
        r["ms_p50"] = 1000 * statistics.median(times[i])
    (args.out / "rows_timed.json").write_text(json.dumps(rows, indent=2))
    by = {(r["arm"], r["stage"], r["runtime"], r["precision"]): r for r in rows}
    print("| stage | runtime, precision | before: Y-PSNR | before: ms | after: Y-PSNR | after: ms | "
          "Y-PSNR gain | speed-up |\n|---|---|---:|---:|---:|---:|---:|---:|")
    for (arm, stage, runtime, precision), b in by.items():
        if arm != "before":
            continue
        a = by[("after", stage, runtime, precision)]
        print(f"| {stage} | {runtime} {precision} | {b['psnr_y']:.3f} | {b['ms_p50']:.2f} | {a['psnr_y']:.3f} | "
              f"{a['ms_p50']:.2f} | {a['psnr_y'] - b['psnr_y']:+.3f} | {b['ms_p50'] / a['ms_p50']:.2f}x |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=["export", "time"])
    ap.add_argument("--before", type=Path)
    ap.add_argument("--after", type=Path)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "stage_table")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--eval-images", type=int, default=None)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase == "export":
        torch.set_num_threads(1)
        export_phase(args)
    else:
        time_phase(args)


if __name__ == "__main__":
    main()
