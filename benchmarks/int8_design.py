"""Int8-friendly graph choices, measured with the real exporters (issue 12, item 2): the int8 Y-PSNR delta of
each stage checkpoint's ONNX QDQ and TFLite full-int8 export, with and without the output clamp.

Each variant exports the same weights (the collapsed student), calibrated the way ``sr-shrink export`` does (the
run's generator.pt), and reads ``verification.delta_psnr_y`` (int8 file minus the fp32 student, Y-PSNR on the
eval split, 8-bit outputs) from the export record. Files go to a temporary folder; the runs are not touched.

    python benchmarks/int8_design.py runs/blocks_x2/rep_s*/stage_04.pt runs/blocks_x4/rep_s*/stage_04.pt
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sr_shrink.export.pipeline as pipeline  # noqa: E402
from sr_shrink.export import build_wrapper, export_run  # noqa: E402

VARIANTS = {"no clamp (before)": dict(clamp=False), "output clamp [0, 1] (now the default)": dict(clamp=True)}


def int8_delta(stage: Path, target: str, variant: dict, out: Path) -> float:
    """Return the verified int8 delta Y-PSNR (dB) of ``stage`` exported to ``target`` with the wrapper options
    ``variant``."""
    pipeline.build_wrapper = functools.partial(build_wrapper, **variant)
    try:
        n = int(stage.stem.split("_")[-1])
        entry = export_run(stage.parent, target, stage=n, precision="int8", out=out)[0]
    finally:
        pipeline.build_wrapper = build_wrapper
    return entry["verification"]["delta_psnr_y"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stages", nargs="+", type=Path, help="stage_XX.pt files of distill runs (with generator.pt)")
    ap.add_argument("--targets", nargs="+", default=["onnx", "tflite"])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for stage in args.stages:
            for target in args.targets:
                for name, variant in VARIANTS.items():
                    d = int8_delta(stage, target, variant, Path(tmp))
                    rows.setdefault((target, name), []).append(d)
                    print(f"{stage} {target} {name}: {d:+.4f} dB", flush=True)
    print(f"\n| target | graph | mean int8 delta Y-PSNR dB ({len(args.stages)} students) | min-max |")
    print("|---|---|---:|---|")
    for (target, name), ds in rows.items():
        print(f"| {target} | {name} | {statistics.mean(ds):+.3f} | {min(ds):+.3f} to {max(ds):+.3f} |")


if __name__ == "__main__":
    main()
