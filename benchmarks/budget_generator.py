"""At equal wall time (``--time-budget``): the default data-free recipe against the same recipe without the
generator's game, on the teacher panel.

Under ``--time-budget`` the steps per stage come from the measured cost of a step. With a large teacher most of that
cost is the generator's game (a teacher forward and backward every ``--student-steps-per-g`` student steps) and the
teacher labelling its samples; the synthetic share comes from the pool, labelled once. Without the game every step
is a student step on pool crops, several times cheaper, so the same minutes buy several times the steps.

Variants (each a set of distill options on top of the panel's recipe: 16 ch, ``--stages 2:4 --stage-step 2``):
``game`` (datafree with the generator's game, ``--mix 0.5``, the default without a budget) and ``pool`` (the
labelled pool alone: ``--mix 1.0``, no generator; ``--student-steps-per-g 1000000000`` kept the game to each
stage's first step in the code before ``--mix 1`` dropped the generator, which the seed-0 screen ran on). The two
runs of a (teacher, seed) pair run at the same time, one thread each, so both see the same machine; pairs run one
after another. A finished run is kept, so a stopped sweep goes on.

    python benchmarks/budget_generator.py --panel ../panel_teachers --out runs/budget_g --minutes 5 --seeds 0
    python benchmarks/budget_generator.py --panel ../panel_teachers --out runs/budget_g --summarize-only

``--pool-size N`` gives the ``pool`` variant ``--pool N`` (named ``poolN``; the ``game`` run beside it keeps the
default 512), to ask whether the pool alone lacks more images on the PSNR teachers.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from teacher_panel import TEACHERS, teacher_path  # noqa: E402

RECIPE = ["--stages", "2:4", "--stage-step", "2", "--channels", "16"]
VARIANTS = {"game": ["--mix", "0.5"], "pool": ["--mix", "1.0", "--student-steps-per-g", "1000000000"]}


def _done(folder: Path) -> dict | None:
    try:
        run = json.loads((folder / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return run if run.get("complete") else None


def variants(pool_size: int | None) -> dict[str, list[str]]:
    """Return the variants' names and options: with ``pool_size``, ``poolN`` (``--pool N``) and ``game_vs_poolN``
    (the default ``game``, written beside the default pair's)."""
    if pool_size is None:
        return VARIANTS
    return {f"game_vs_pool{pool_size}": VARIANTS["game"],
            f"pool{pool_size}": [*VARIANTS["pool"], "--pool", str(pool_size)]}


def run_pair(teacher: str, panel: Path, out: Path, minutes: float, seed: int, pool_size: int | None = None) -> None:
    """Run both variants (:func:`variants`) of (``teacher``, ``seed``) at once, one thread each; a finished run is
    kept."""
    procs = []
    for variant, extra in variants(pool_size).items():
        folder = out / teacher / f"{variant}_{minutes:g}min_s{seed}"
        if _done(folder) is not None:
            continue
        shutil.rmtree(folder, ignore_errors=True)  # a budgeted run is not re-paced on resume: start it over
        folder.parent.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "sr_shrink.cli", "distill", str(teacher_path(teacher, panel)), "--out",
               str(folder), "--time-budget", f"{minutes:g}", "--seed", str(seed), "--threads", "1", "--device",
               "cpu", "--quiet", *RECIPE, *extra]
        log = open(folder.parent / f"{folder.name}.log", "w")
        procs.append(subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                      env={**os.environ, "OMP_NUM_THREADS": "1"}))
    for p in procs:
        p.wait()


def summarize(out: Path, pool_size: int | None = None) -> str:
    """Return the markdown table of the finished pairs under ``out`` (final stage, judged metric)."""
    game, pool = (f"{name}_" for name in variants(pool_size))
    lines = ["| teacher | minutes | seed | game: judged metric (stage 1 / 2) | steps per stage | pool: judged metric "
             "(stage 1 / 2) | steps per stage | pool - game |", "|---|---:|---:|---|---|---|---|---:|"]
    diffs: dict[str, list[float]] = {}
    for teacher, (_file, judged) in TEACHERS.items():
        key = "val_psnr_y" if judged == "psnr" else "fidelity_psnr_y"
        for folder in sorted((out / teacher).glob(f"{game}*min_s*")):
            other = folder.with_name(folder.name.replace(game, pool, 1))
            a, b = _done(folder), _done(other)
            if a is None or b is None:
                continue
            minutes, seed = folder.name[len(game):].split("_")[0], folder.name.rsplit("_s", 1)[1]
            d = b["stages"][-1][key] - a["stages"][-1][key]
            diffs.setdefault(teacher, []).append(d)

            def cells(run, key=key):
                stages = " / ".join(f"{s[key]:.2f}" for s in run["stages"])
                return f"**{run['stages'][-1][key]:.2f}** ({stages})", " / ".join(str(s["steps"])
                                                                              for s in run["stages"])
            lines.append(f"| {teacher} ({'fidelity' if judged == 'fidelity' else 'Y-PSNR'}) | {minutes} | {seed} | "
                         f"{' | '.join(cells(a))} | {' | '.join(cells(b))} | {d:+.2f} |")
    lines.append("")
    lines.append("Mean pool - game per teacher: " + ", ".join(
        f"{t} {statistics.mean(v):+.2f} (n={len(v)})" for t, v in diffs.items()))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--panel", type=Path, help="folder of make_teachers.py's files")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--teachers", nargs="+", default=list(TEACHERS))
    ap.add_argument("--pool-size", type=int, help="the pool variant's --pool (default: 512, named pool)")
    ap.add_argument("--summarize-only", action="store_true")
    args = ap.parse_args()
    if not args.summarize_only:
        for seed in args.seeds:
            for teacher in args.teachers:
                run_pair(teacher, args.panel, args.out, args.minutes, seed, args.pool_size)
                print(summarize(args.out, args.pool_size).splitlines()[-1], flush=True)
    print(summarize(args.out, args.pool_size))


if __name__ == "__main__":
    main()
