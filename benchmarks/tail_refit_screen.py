"""The ONNX int8 tail refit's ridge (BENCHMARKS 29): one stage of a run exported as ONNX int8 without the refit
and with it at each ``--ridge`` (:func:`sr_shrink.export.refit.refit_tail`, relative to the mean diagonal of the
patches' Gram matrix), printing the Y-PSNR delta against the fp32 student and the RGB PSNR against it.

    OMP_NUM_THREADS=1 python benchmarks/tail_refit_screen.py RUN STAGE [--variant "int8 nrr fs"] [--ridge 0 1e-3 1e-2]
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

import int8_panel  # noqa: E402

import sr_shrink.export.onnx as onnx_export  # noqa: E402
from sr_shrink.export.refit import refit_tail  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("stage", type=int)
    ap.add_argument("--variant", default="int8", choices=["int8", "int8 nrr fs"])
    ap.add_argument("--ridge", type=float, nargs="+", default=[0.0, 1e-3, 1e-2])
    args = ap.parse_args()
    plain = int8_panel.measure(args.run, args.stage, "onnx", args.variant)
    print(f"no refit: delta {plain['delta']:+.4f} dB, {plain['psnr_vs_torch']:.2f} dB from the student", flush=True)
    for ridge in args.ridge:
        onnx_export.refit_tail = functools.partial(refit_tail, ridge=ridge)
        try:
            r = int8_panel.measure(args.run, args.stage, "onnx", args.variant + " refit")
        finally:
            onnx_export.refit_tail = refit_tail
        print(f"ridge {ridge:g}: delta {r['delta']:+.4f} dB, {r['psnr_vs_torch']:.2f} dB from the student", flush=True)


if __name__ == "__main__":
    main()
