"""What Core ML's enumerated-shape default costs at export: seconds and verification per input policy.

Exports one stage of a run to Core ML (fp16) three ways, one after the other in this process, and prints the
wall time of each export (conversion and verification) with its verification record:

- ``any``: ``--shapes any`` (RangeDim), verified once at the eval images' own size;
- ``default``: the enumerated default set, each size verified on about the same number of pixels
  (:func:`sr_shrink.export.coreml.images_per_shape`);
- ``default-all``: the same set with every eval image at every size (what verification did before).

    python benchmarks/coreml_shapes_cost.py RUN_DIR --stage 4
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.export import coreml, export_run  # noqa: E402

MODES = ("any", "default", "default-all")


def export_once(run: Path, stage: int, mode: str, out: Path) -> tuple[float, dict]:
    """Return (seconds, export.json entry) of one Core ML export of ``stage`` under ``mode``."""
    shapes = "any" if mode == "any" else None
    every = (lambda n, shapes: {hw: n for hw in shapes}) if mode == "default-all" else coreml.images_per_shape
    with mock.patch.object(coreml, "images_per_shape", every):
        t0 = time.perf_counter()
        entry = export_run(run, "coreml", stage=stage, shapes=shapes, out=out)[0]
    return time.perf_counter() - t0, entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--stage", default="last")
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    args = ap.parse_args()
    stage = args.stage if args.stage == "last" else int(args.stage)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mode in args.modes:
            seconds, e = export_once(args.run, stage, mode, Path(tmp) / mode)
            v = e["verification"]
            per = v.get("shapes") or {}
            rows.append((mode, seconds, v["verified"], v["delta_psnr_y"], v.get("worst_delta_psnr_y"),
                         ", ".join(f"{k}: {s['images']}" for k, s in per.items()) or "eval images' own size"))
    print("| mode | seconds | verified | Δ Y-PSNR dB (headline) | worst Δ dB | images per size |")
    print("|---|---:|---|---:|---:|---|")
    for mode, seconds, ok, delta, worst, per in rows:
        worst_s = "-" if worst is None else f"{worst:+.4f}"
        print(f"| {mode} | {seconds:.1f} | {'yes' if ok else 'no'} | {delta:+.4f} | {worst_s} | {per} |")


if __name__ == "__main__":
    main()
