"""Which model-zoo architectures load as teachers, how long loading takes, and what a 16.7 M-parameter
RRDBNet x4 (RealESRGAN_x4plus's size) costs for ``sr-shrink info``.

1. Writes every random-weight checkpoint of ``tests/zoo_checkpoints.py`` (spandrel's own classes, saved in
   the layouts the projects publish) and times ``load_teacher`` on each (best of ``--repeats``, after one
   load that pays spandrel's import). Prints a markdown table: architecture, layout, scale, params, seconds.
2. Writes an RRDBNet x4 with 64 feats and 23 blocks ({"params_ema": ...}, BasicSR keys, 67 MB) and runs
   ``python -m sr_shrink.cli info FILE`` in a fresh process: wall seconds and the child's peak RSS. Also
   times ``load_teacher`` and ``count_macs`` in this process.

    OMP_NUM_THREADS=2 python benchmarks/zoo_teachers.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from zoo_checkpoints import BUILDERS, rrdbnet_x4  # noqa: E402

from sr_shrink.teachers import count_macs, load_teacher  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        cases = [build(d) for build in BUILDERS.values()]
        load_teacher(cases[0].path)  # pays the one-time spandrel import
        print("| architecture (spandrel id) | layout | scale | params | load s |")
        print("|---|---|---:|---:|---:|")
        for c in cases:
            best = float("inf")
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                t = load_teacher(c.path)
                best = min(best, time.perf_counter() - t0)
            print(f"| {c.name} ({t.info.arch}) | {c.layout} | x{t.info.scale} | {t.info.params:,} | {best:.2f} |")

        big = rrdbnet_x4(d, num_filters=64, num_blocks=23)
        size_mb = big.path.stat().st_size / 1e6
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "sr_shrink.cli", "info", str(big.path), "--json"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        info_s = time.perf_counter() - t0
        if r.returncode:
            raise SystemExit(r.stderr)
        child_rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        t0 = time.perf_counter()
        t = load_teacher(big.path)
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        macs = count_macs(t)
        macs_s = time.perf_counter() - t0
        print(f"\nRRDBNet x4 64nf 23nb: {t.info.params:,} params, file {size_mb:.0f} MB, {macs / 1e9:.1f} GMACs at "
              f"256x256 (counted in {macs_s:.1f} s); load_teacher {load_s:.1f} s; `sr-shrink info` in a fresh "
              f"process {info_s:.1f} s, peak RSS {child_rss:.0f} MB; threads {os.environ.get('OMP_NUM_THREADS', '-')}")


if __name__ == "__main__":
    main()
