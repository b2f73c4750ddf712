"""``--time-budget`` on a machine that gets busier mid-run: does the run keep its budget, and every stage its share?

Runs ``sr-shrink distill TEACHER --time-budget MINUTES --out OUT`` (this checkout's code) and, ``--load-after``
seconds after it starts, one busy-looping process per ``--load-cores`` until the run ends (the other jobs of a
shared machine). Prints the wall time, the first plan's steps per stage and the steps each stage took, each
stage's planned and spent seconds, and each stage's Y-PSNR and fidelity (BENCHMARKS.md, section 30).

    python benchmarks/budget_under_load.py ../panel_teachers/span_x2_ch52.pth --out /tmp/budget_load --minutes 4
    python benchmarks/budget_under_load.py ... --code ../before   # a worktree of the commit before the change
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _spin() -> None:
    while True:
        pass


def main() -> None:
    """Run the distillation under load and print what its run.json says; return None."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("teacher")
    ap.add_argument("--out", required=True, help="run folder (replaced)")
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--load-after", type=float, default=60.0, help="seconds after the start the load begins")
    ap.add_argument("--load-cores", type=int, default=1)
    ap.add_argument("--code", default=str(REPO), help="checkout whose sr_shrink runs (default: this one; another "
                    "commit's worktree for a before/after)")
    args = ap.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-c", "from sr_shrink.cli import main; main()", "distill", args.teacher, "--out", str(out),
           "--time-budget", str(args.minutes)]
    t0 = time.time()
    proc = subprocess.Popen(cmd, cwd=args.code, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    hogs: list[mp.Process] = []
    try:
        while proc.poll() is None and time.time() - t0 < args.load_after:
            time.sleep(0.5)
        if proc.poll() is None:
            hogs = [mp.Process(target=_spin, daemon=True) for _ in range(args.load_cores)]
            for h in hogs:
                h.start()
        err = proc.communicate()[1]
    finally:
        for h in hogs:
            h.kill()
    wall = time.time() - t0
    if proc.returncode:
        sys.exit(f"distill failed ({proc.returncode}):\n{err[-2000:]}")
    run = json.loads((out / "run.json").read_text())
    tb = run["time_budget"]
    print(f"wall {wall:.0f} s for a {args.minutes:g} min budget (run.json spent_seconds {tb['spent_seconds']}); load "
          f"of {args.load_cores} core(s) from {args.load_after:g} s")
    print(f"first plan: {tb['steps_per_stage']} steps per stage; steps taken: {tb['stage_steps']}")
    print("| stage | blocks | steps | planned s | spent s | Y-PSNR | fidelity |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for s in run["stages"]:
        ph = tb["phases"][f"stage_{s['stage']}"]
        print(f"| {s['stage']} | {s['n_blocks']} | {s['steps']} | {ph['planned']:.0f} | {ph['spent']:.0f} | "
              f"{s.get('val_psnr_y', float('nan')):.2f} | {s.get('fidelity_psnr_y', float('nan')):.2f} |")
    print(f"teacher {run.get('teacher_psnr_y')}, bicubic {run.get('bicubic_psnr_y')}")
    cut = [line for line in err.splitlines() if "instead of" in line or line.startswith("note:")]
    print("\n".join(cut[:12]))


if __name__ == "__main__":
    main()
