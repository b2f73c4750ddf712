"""Issue 18's teacher panel: teacher x mode x budget x seed, the yardstick for every default of the recipe.

Teachers: the two bundled EDSRs and four real pretrained ones that ``../shared/teachers/make_teachers.py DIR``
writes (SPAN x2/x4 ch52, Real-CUGAN x4, Real-ESRGAN x4plus anime 6B; never bundled: pass ``--panel DIR``).
Modes: ``datafree`` (the default recipe), ``data`` (KD on the teacher's output on the first ``--photos`` images of
``--data``, by name: the same photos for every teacher) and ``noise``. Students 16 ch grown 2 -> 4 blocks
(``--stages 2:4 --stage-step 2``), evaluated on the bundled eval split: Y-PSNR against the ground truth and
fidelity (Y-PSNR of the student against the teacher's output). GAN-trained teachers (Real-CUGAN, Real-ESRGAN
anime) are judged by fidelity, the others by Y-PSNR.

A variant (``--variant NAME --set "--lr-patch 32 --targets raw"``) is the default recipe with some distill options
changed, for screening levers; its runs live beside the default's. Every run is a folder
``OUT/TEACHER/VARIANT_MODE_STEPS_sSEED``; a finished one is kept, an unfinished one resumed, so an interrupted
sweep goes on where it stopped. Several sweeps may share ``--out``: a run another live process holds (``.lock``)
is skipped. ``--summarize-only`` writes the table of what is there to ``OUT/summary.md`` (and ``--md FILE``).

    python ../shared/teachers/make_teachers.py ../panel_teachers
    python benchmarks/teacher_panel.py --panel ../panel_teachers --out runs/panel --steps 300 --seeds 0
    python benchmarks/teacher_panel.py --panel ../panel_teachers --out runs/panel --teachers span_x2 \\
        --modes datafree --steps 300 --seeds 0 --variant patch32 --set "--lr-patch 32"
    python benchmarks/teacher_panel.py --panel ../panel_teachers --out runs/panel --summarize-only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import list_images, load_eval_set  # noqa: E402
from sr_shrink.distill import DistillConfig, distill  # noqa: E402
from sr_shrink.errors import SRShrinkError  # noqa: E402
from sr_shrink.evaluate import evaluate_bicubic, teacher_references  # noqa: E402
from sr_shrink.teachers import load_teacher  # noqa: E402

ASSETS = REPO / "sr_shrink" / "assets"
# name -> (file, in the panel folder unless bundled; judged by: psnr (Y-PSNR vs ground truth) or fidelity)
TEACHERS = {
    "edsr_x2": (ASSETS / "teacher_x2.pt", "psnr"),
    "edsr_x4": (ASSETS / "teacher_x4.pt", "psnr"),
    "span_x2": ("span_x2_ch52.pth", "psnr"),
    "span_x4": ("span_x4_ch52.pth", "psnr"),
    "realcugan_x4": ("realcugan_x4.pth", "fidelity"),
    "realesrgan_anime_x4": ("RealESRGAN_x4plus_anime_6B.pth", "fidelity"),
}
MODES = ("datafree", "data", "noise")
FIELDS = {f.name: f for f in dataclasses.fields(DistillConfig)}


def teacher_path(name: str, panel: Path) -> Path:
    """Return the file of panel teacher ``name``; exit with a one-line error naming the script that makes it."""
    f = TEACHERS[name][0]
    p = f if isinstance(f, Path) else panel / f
    if not p.exists():
        sys.exit(f"error: {p} is missing; write the panel with python ../shared/teachers/make_teachers.py {panel}")
    return p


def parse_set(text: str) -> dict:
    """Return the DistillConfig overrides of distill-style options, e.g. ``--lr-patch 32 --targets raw``."""
    words, out = shlex.split(text), {}
    if len(words) % 2:
        sys.exit(f"error: --set {text!r}: give option-value pairs, e.g. --set \"--lr-patch 32\"")
    for opt, value in zip(words[::2], words[1::2]):
        name = opt.lstrip("-").replace("-", "_")
        if not opt.startswith("--") or name not in FIELDS or name in ("mode", "seed", "steps_per_stage"):
            sys.exit(f"error: --set {opt}: not a distill option this script lets a variant change")
        default = FIELDS[name].default
        kind = type(default) if default is not None and default is not dataclasses.MISSING else str
        out[name] = kind(float(value)) if kind is int else kind(value)
    return out


def photo_subset(data: Path, n: int, out: Path) -> Path:
    """Copy the first ``n`` images of ``data`` (by name) into ``out/photos{n}``; return that folder."""
    images = list_images(data) if data.is_dir() else []
    if len(images) < n:
        sys.exit(f"error: {data} has {len(images)} images, --photos {n} needs more (python scripts/make_images.py "
                 f"--train {data})")
    folder = out / f"photos{n}"
    folder.mkdir(parents=True, exist_ok=True)
    for p in images[:n]:
        if not (folder / p.name).exists():
            shutil.copy2(p, folder / p.name)
    return folder


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take_lock(folder: Path) -> bool:
    """Return True after taking ``folder/.lock`` for this process; False when another live process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / ".lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text() or "0")
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                return False
            lock.unlink(missing_ok=True)  # left by a process that died
            continue
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        return True
    return False


def finished(folder: Path, cfg: DistillConfig) -> dict | None:
    """Return the run.json dict of a complete run of ``cfg`` in ``folder``, or None."""
    f = folder / "run.json"
    if not f.exists():
        return None
    run = json.loads(f.read_text())
    ok = run.get("complete") and all(run["config"].get(k) == v for k, v in cfg.to_dict().items()
                                     if k not in ("lr_patch", "extra", "scale") and v != "auto")  # recorded resolved
    return run if ok else None


def run_one(teacher: Path, folder: Path, cfg: DistillConfig, eval_images: int | None) -> dict | None:
    """Distil ``cfg`` into ``folder`` unless done (resuming an unfinished run); return its run.json dict, or
    None when another process holds the folder."""
    run = finished(folder, cfg)
    if run is not None:
        return run
    if not take_lock(folder):
        return None
    try:
        run = finished(folder, cfg)  # another process may have finished it since the first look
        if run is not None:
            return run
        t0 = time.time()
        resume = (folder / "run.json").exists()
        try:
            run = distill(str(teacher), folder, cfg, resume=resume, force=not resume, quiet=True, device="cpu",
                          eval_images=eval_images)
        except SRShrinkError as exc:  # not the same recipe (e.g. an older run): start over
            if not resume:
                raise
            print(f"  {folder.name}: not resumable ({str(exc)[:80]}...); starting over", flush=True)
            run = distill(str(teacher), folder, cfg, force=True, quiet=True, device="cpu", eval_images=eval_images)
        run["wall_seconds"] = round(time.time() - t0, 1)  # of this call only when it resumed (resumed_from)
        (folder / "run.json").write_text(json.dumps(run, indent=2))
        return run
    finally:
        (folder / ".lock").unlink(missing_ok=True)


def bicubic_fidelity(teacher: Path, folder: Path, eval_images: int | None) -> float:
    """Return the fidelity of bicubic upscaling to ``teacher`` (Y-PSNR of bicubic against the teacher's output on
    the eval split), the floor a student's fidelity should clear; cached in ``folder/bicubic_fidelity.json``."""
    f = folder / "bicubic_fidelity.json"
    if f.exists():
        return json.loads(f.read_text())["fidelity_psnr_y"]
    t = load_teacher(str(teacher))
    _, refs = teacher_references(t, load_eval_set(t.scale, None, eval_images), t.scale)
    value = evaluate_bicubic(refs, t.scale)["psnr_y"]
    folder.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({"fidelity_psnr_y": value}))
    return value


# ---------------------------------------------------------------- summary
def _mean(v: list[float]) -> float | None:
    return statistics.mean(v) if v else None


def _cell(v: list[float]) -> str:
    if not v:
        return "-"
    if len(v) == 1:
        return f"{v[0]:.2f}"
    return f"{statistics.mean(v):.2f} ({min(v):.2f}-{max(v):.2f}, {len(v)} seeds)"


def _d(a: float | None, b: float | None) -> str:
    return "-" if a is None or b is None else f"{a - b:+.2f}"


def collect(out: Path) -> dict:
    """Return ``{(teacher, variant, mode, steps): [run.json dicts]}`` of the complete runs under ``out``."""
    found: dict = {}
    for f in sorted(out.glob("*/*/run.json")):
        run = json.loads(f.read_text())
        teacher, (variant, mode, steps, _seed) = f.parent.parent.name, _parse_folder(f.parent.name)
        if run.get("complete") and teacher in TEACHERS and mode:
            found.setdefault((teacher, variant, mode, steps), []).append(run)
    return found


def _parse_folder(name: str) -> tuple[str, str | None, int, int]:
    parts = name.split("_")
    try:
        seed, steps, mode = int(parts[-1][1:]), int(parts[-2]), parts[-3]
    except (IndexError, ValueError):
        return name, None, 0, 0
    return "_".join(parts[:-3]), mode if mode in MODES else None, steps, seed


def summarize(found: dict, bicubic_fid: dict[str, float]) -> list[str]:
    """Markdown lines: the table of every (teacher, variant, mode, budget) and the issue's goals per teacher
    (``bicubic_fid``: teacher -> fidelity of bicubic upscaling to it, where measured)."""
    lines = ["Final stage (4 blocks, 16 ch), mean over seeds (range). Y-PSNR against the ground truth and fidelity"
             " (Y-PSNR against the teacher's output) in dB on the bundled eval split; the judged metric is in bold"
             " (fidelity for GAN-trained teachers). Stages: the judged metric of each stage (2 -> 4 blocks)."
             " Seconds: wall time per run, two runs at once at 1 thread each on a shared 2-core machine (not a"
             " speed figure).", "",
             "| teacher | variant | mode | steps/stage | Y-PSNR | fidelity | stages | teacher | bicubic | bicubic "
             "fidelity | s/run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (teacher, variant, mode, steps), runs in sorted(found.items(), key=lambda kv: (
            list(TEACHERS).index(kv[0][0]), kv[0][1] != "default", kv[0][1], kv[0][3], MODES.index(kv[0][2]))):
        judged = TEACHERS[teacher][1]
        psnr = [r["stages"][-1]["val_psnr_y"] for r in runs]
        fid = [r["stages"][-1]["fidelity_psnr_y"] for r in runs]
        key = "val_psnr_y" if judged == "psnr" else "fidelity_psnr_y"
        stages = " / ".join(f"{_mean([r['stages'][i][key] for r in runs]):.2f}" for i in range(len(runs[0]["stages"])))
        p, f = _cell(psnr), _cell(fid)
        p, f = (f"**{p}**", f) if judged == "psnr" else (p, f"**{f}**")
        secs = _mean([r.get("wall_seconds", 0.0) for r in runs])
        bf = bicubic_fid.get(teacher)
        lines.append(f"| {teacher} | {variant} | {mode} | {steps} | {p} | {f} | {stages} | "
                     f"{runs[0]['teacher_psnr_y']:.2f} | {runs[0]['bicubic_psnr_y']:.2f} | "
                     f"{'-' if bf is None else f'{bf:.2f}'} | {secs:.0f} |")
    lines += ["", "Goals of issue 18 per teacher (default recipe; judged metric; n = seeds behind each mean):", "",
              "| teacher | budget | datafree - data (>= -0.1) | datafree - noise (>= +0.5) | stage gains of datafree "
              "(each >= +0.05) | teacher - datafree | teacher - data (capacity) |", "|---|---|---|---|---|---|---|"]
    for teacher in TEACHERS:
        key = "val_psnr_y" if TEACHERS[teacher][1] == "psnr" else "fidelity_psnr_y"
        for steps in sorted({k[3] for k in found if k[0] == teacher and k[1] == "default"}):
            m = {mode: found.get((teacher, "default", mode, steps), []) for mode in MODES}
            if not any(m.values()):
                continue
            final = {mode: _mean([r["stages"][-1][key] for r in runs]) for mode, runs in m.items()}
            n = {mode: len(runs) for mode, runs in m.items()}
            gains = "-"
            if m["datafree"]:
                per = [_mean([r["stages"][i][key] for r in m["datafree"]])
                       for i in range(len(m["datafree"][0]["stages"]))]
                gains = " / ".join(f"{b - a:+.2f}" for a, b in zip(per, per[1:]))
            ref = m["datafree"] or m["data"] or m["noise"]
            top = ref[0]["teacher_psnr_y"] if key == "val_psnr_y" else None  # fidelity's ceiling is the teacher
            lines.append(f"| {teacher} | {steps} | {_d(final['datafree'], final['data'])} (n={n['datafree']}/"
                         f"{n['data']}) | {_d(final['datafree'], final['noise'])} (n={n['datafree']}/{n['noise']}) | "
                         f"{gains} | {_d(top, final['datafree'])} | {_d(top, final['data'])} |")
        both = [_mean([r["stages"][-1][key] for r in found.get((teacher, "default", "datafree", s), [])])
                for s in (300, 1500)]
        if None not in both:
            lines.append(f"| {teacher} | 1500 - 300 | datafree gains {both[1] - both[0]:+.2f} (goal >= +0.25) "
                         "| | | | |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--panel", type=Path, default=REPO / "runs" / "panel_teachers",
                    help="folder make_teachers.py wrote the four real teachers into")
    ap.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS))
    ap.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    ap.add_argument("--steps", nargs="+", type=int, default=[300, 1500], help="student steps per stage")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--variant", default="default", help="name of the recipe variant (folder prefix)")
    ap.add_argument("--set", dest="overrides", default="", help='distill options of the variant, e.g. "--lr-patch 32"')
    ap.add_argument("--data", type=Path, default=REPO / "data" / "train", help="photos for the data mode")
    ap.add_argument("--photos", type=int, default=5)
    ap.add_argument("--stages", default="2:4")
    ap.add_argument("--stage-step", type=int, default=2)
    ap.add_argument("--channels", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--out", type=Path, default=REPO / "runs" / "panel")
    ap.add_argument("--md", type=Path, default=None, help="also write the summary table here")
    ap.add_argument("--summarize-only", action="store_true", help="only tabulate the finished runs in --out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    overrides = parse_set(args.overrides)
    if args.variant == "default" and overrides:
        sys.exit("error: --set changes the recipe: name the variant with --variant NAME")
    if not args.variant.replace("-", "").isalnum():
        sys.exit(f"error: --variant {args.variant!r}: pick a plain name (letters, digits, -), e.g. patch32")
    if not args.summarize_only:
        a, b = (int(v) for v in args.stages.split(":"))
        photos = photo_subset(args.data, args.photos, args.out) if "data" in args.modes else None
        paths = {t: teacher_path(t, args.panel) for t in args.teachers}
        # budget-major, then seed: a stopped sweep leaves whole screens (every teacher x mode at one budget/seed)
        for steps in args.steps:
            for seed in args.seeds:
                for teacher in args.teachers:
                    for mode in args.modes:
                        folder = args.out / teacher / f"{args.variant}_{mode}_{steps}_s{seed}"
                        cfg = DistillConfig(mode=mode, stage_start=a, stage_end=b, stage_step=args.stage_step,
                                            steps_per_stage=steps, channels=args.channels, seed=seed,
                                            data_dir=str(photos) if mode == "data" else None, **overrides)
                        run = run_one(paths[teacher], folder, cfg, args.eval_images)
                        if run is None:
                            print(f"{teacher} {folder.name}: held by another process, skipped", flush=True)
                            continue
                        print(f"{teacher} {folder.name}: Y-PSNR " + " ".join(f"{s['val_psnr_y']:.2f}"
                                                                               for s in run["stages"])
                              + " fidelity " + " ".join(f"{s['fidelity_psnr_y']:.2f}" for s in run["stages"])
                              + f" (teacher {run['teacher_psnr_y']:.2f}, {run.get('wall_seconds', 0):.0f} s)",
                              flush=True)
    found = collect(args.out)
    if not found:
        sys.exit(f"error: no finished runs in {args.out}")
    bicubic_fid = {}
    for teacher in sorted({k[0] for k in found}):
        cached = args.out / teacher / "bicubic_fidelity.json"
        if cached.exists() or not args.summarize_only:
            bicubic_fid[teacher] = bicubic_fidelity(teacher_path(teacher, args.panel), args.out / teacher,
                                                    args.eval_images)
    lines = summarize(found, bicubic_fid)
    print("\n".join(lines))
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    if args.md:
        args.md.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
