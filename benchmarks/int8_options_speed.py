"""ONNX Runtime latency of one stage's int8 files under the export's scheme options, against its fp32 file.

Each file is written by the real exporter (``export_run``, no verification) with one set of ONNX int8 options
(``OPTION_SETS``), then all are timed interleaved (one thread, a 256x256 LR input, median of ROUNDS calls each;
``int8_onnx_variants.time_files``), so machine noise hits them alike. Quality figures come from
``int8_panel.py``; this only prices the options.

    OMP_NUM_THREADS=1 python benchmarks/int8_options_speed.py RUN/stage_02.pt [RUN2/stage_01.pt ...] --rounds 25
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from int8_onnx_variants import time_files  # noqa: E402

from sr_shrink.export import export_run  # noqa: E402

OPTION_SETS = {
    "fp32": dict(precision="fp32"),
    "int8": dict(precision="int8"),
    "int8 --float-first-conv": dict(precision="int8", float_first_conv=True),
    "int8 --no-reduce-range --float-stream": dict(precision="int8", reduce_range=False, float_stream=True),
    "int8 --no-reduce-range --float-stream --float-first-conv": dict(precision="int8", reduce_range=False,
                                                                     float_stream=True, float_first_conv=True),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stages", nargs="+", type=Path, help="stage_XX.pt files of distill runs")
    ap.add_argument("--rounds", type=int, default=25)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for stage in args.stages:
        n = int(stage.stem.split("_")[-1])
        with tempfile.TemporaryDirectory() as tmp:
            files = {name: Path(export_run(stage.parent, "onnx", stage=n, out=Path(tmp) / str(i), verify=False,
                                           **opts)[0]["path"])
                     for i, (name, opts) in enumerate(OPTION_SETS.items())}
            ms = time_files(files, args.rounds)
        print(f"\n{stage}\n| file | ms (1 thread, 256x256) | x fp32 |\n|---|---:|---:|")
        for name, t in ms.items():
            print(f"| {name} | {t:.1f} | {t / ms['fp32']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
