"""int8 and w8a16 deltas per panel teacher and stage, from the real exporters (issue 20 item 4).

For each teacher's data-free run under PANEL (``PANEL/TEACHER/RUN/stage_XX.pt``, made by
``benchmarks/teacher_panel.py``) and each stage, exports ONNX and TFLite files at int8 (the default scheme),
int8 with range equalization (``equalize=True``, :mod:`sr_shrink.export.equalize`; exponent 1 and 0.5),
w8a16, and int8 after ``--qat 1000`` (``qat`` variants: the default student target, or the teacher); ONNX int8 files
are written without the tail refit (``--no-tail-refit``) unless the variant says ``refit`` (BENCHMARKS 29); it reads
``verification.delta_psnr_y`` (file minus the fp32 student, Y-PSNR on the bundled eval split, 8-bit outputs)
and ``psnr_vs_torch``; for a QAT variant ``qat_delta_psnr_y`` (file minus the **original** fp32 student), with
the plain PTQ file's delta and the tuned float student's drift next to it. The runs are read only: each is
exported from a copy in a temporary folder. Results are appended to ``--out`` (JSON lines) as they come, and a
rerun skips what is there; the table is printed at the end. ``--fidelity`` adds a table of the loss against each
file's fidelity gap (its RGB PSNR against the student minus the student's Y-PSNR against the ground truth), binned,
next to what an error independent of the student's own would cost (BENCHMARKS 25). ``--per-image`` tabulates
each file's loss on the image where it loses most (the student's Y-PSNR there) and its loss without one image
(``--leave-out``, ladybird: the near-exact one), from ``verification.per_image`` (BENCHMARKS 31). ``ffc``
variants add ``--float-first-conv`` (BENCHMARKS 33), ``gptq`` variants ``--gptq`` (BENCHMARKS 34). TFLite int8
files put the last Add's terms on the pixel grid (BENCHMARKS 35) unless the variant says ``nogrid``; ``grid``
variants name that default.

    OMP_NUM_THREADS=1 python benchmarks/int8_panel.py --panel ../panel_runs/panel --out runs/int8_panel.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import sr_shrink.export.pipeline as pipeline  # noqa: E402
import sr_shrink.export.tflite as tflite_export  # noqa: E402
from sr_shrink.export import export_run  # noqa: E402
from sr_shrink.export.equalize import EqualizeConfig, equalize  # noqa: E402
from sr_shrink.export.onnx import Int8Scheme  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402

TEACHERS = ("edsr_x2", "edsr_x4", "span_x2", "span_x4", "realcugan_x4", "realesrgan_anime_x4")
VARIANTS = {"int8": dict(precision="int8"), "int8 eq": dict(precision="int8", equalize=True),
            "int8 eq0.5": dict(precision="int8", equalize=True),
            "w8a16": dict(precision="w8a16", bias_correction=False, gptq=False),  # plain (w8a16 has both by default)
            "int8 bc": dict(precision="int8", bias_correction=True),
            "w8a16 bc": dict(precision="w8a16", bias_correction=True, gptq=False),
            "int8 pct": dict(precision="int8", calib_method="percentile"),
            "int8 qat pct": dict(precision="int8", calib_method="percentile", qat_steps=1000),
            "int8 nrr fs": dict(precision="int8", reduce_range=False, float_stream=True),
            "int8 qat": dict(precision="int8", qat_steps=1000),
            "int8 qat teacher": dict(precision="int8", qat_steps=1000, qat_target="teacher"),
            "int8 qat nrr fs": dict(precision="int8", qat_steps=1000, reduce_range=False, float_stream=True),
            "int8 refit": dict(precision="int8", tail_refit=True),
            "int8 nrr fs refit": dict(precision="int8", reduce_range=False, float_stream=True, tail_refit=True),
            "w8a16 bc gptq": dict(precision="w8a16", bias_correction=True, gptq=True),
            "w8a16 gptq": dict(precision="w8a16", bias_correction=False, gptq=True),
            "int8 gptq": dict(precision="int8", gptq=True),
            "int8 grid": dict(precision="int8"), "int8 nogrid": dict(precision="int8"),
            "int8 rtn": dict(precision="int8", gptq=False, bias_correction=False),  # Core ML: weights to nearest
            "int8 gptq bc": dict(precision="int8", gptq=True, bias_correction=True),
            "int8 qat gptq bc": dict(precision="int8", qat_steps=1000, gptq=True, bias_correction=True),
            "int8 grid pct": dict(precision="int8", calib_method="percentile"),
            "int8 refit gptq": dict(precision="int8", tail_refit=True, gptq=True),
            "int8 nrr fs refit ffc gptq": dict(precision="int8", reduce_range=False, float_stream=True, tail_refit=True,
                                               float_first_conv=True, gptq=True),
            "int8 refit ffc": dict(precision="int8", tail_refit=True, float_first_conv=True),
            "int8 nrr fs refit ffc": dict(precision="int8", reduce_range=False, float_stream=True, tail_refit=True,
                                          float_first_conv=True),
            "int8 nrr fs refit eq": dict(precision="int8", reduce_range=False, float_stream=True, tail_refit=True,
                                         equalize=True),
            "int8 nrr fs refit pct99.9": dict(precision="int8", reduce_range=False, float_stream=True,
                                              tail_refit=True),
            "int8 nrr fs refit pct99.95": dict(precision="int8", reduce_range=False, float_stream=True,
                                               tail_refit=True),
            "int8 cs36": dict(precision="int8", calib_samples=36),  # TFLite: 2x its 18 calibration inputs
            "int8 cs72": dict(precision="int8", calib_samples=72)}
ALPHA = {"int8 eq0.5": 0.5}  # equalization exponent of a variant (default 1: equal ranges)
NO_PIXEL_GRID = {"int8 nogrid"}  # TFLite int8 with the observers' own tail/anchor/input ranges (before section 35)
PERCENTILE = {"int8 nrr fs refit pct99.9": 99.9, "int8 nrr fs refit pct99.95": 99.95}  # ONNX activation ranges


def export_copy(run: Path, target: str, stage: int, **opts) -> dict:
    """Return the export.json entry of ``run``'s ``stage`` exported to ``target`` with ``opts`` from a copy of the
    run in a temporary folder (the run itself is read only; the file is deleted with the folder)."""
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "run"
        copy.mkdir()
        for f in run.iterdir():
            if f.is_file() and not f.name.startswith("."):
                shutil.copy(f, copy / f.name)
        return export_run(copy, target, stage=stage, out=Path(tmp) / "ex", **opts)[0]


def measure(run: Path, stage: int, target: str, variant: str) -> dict:
    """Return the verification figures of ``run``'s ``stage`` exported to ``target`` as ``variant``."""
    t0 = time.perf_counter()
    cfg = EqualizeConfig(alpha=ALPHA.get(variant, 1.0))
    pipeline.equalize = functools.partial(equalize, cfg=cfg)
    opts = dict(VARIANTS[variant])
    if target == "onnx" and opts["precision"] == "int8" and not opts.get("qat_steps"):
        opts.setdefault("tail_refit", False)  # the variants without "refit" are the plain files (BENCHMARKS 29)
    with_options = Int8Scheme.with_options
    if variant in PERCENTILE:  # the ONNX scheme's activation percentile (99.99 in the export)
        Int8Scheme.with_options = lambda self, *a, **k: dataclasses.replace(with_options(self, *a, **k),
                                                                             percentile=PERCENTILE[variant])
    tflite_export.PIXEL_GRID = variant not in NO_PIXEL_GRID
    try:
        e = export_copy(run, target, stage, **opts)
    finally:
        pipeline.equalize = equalize
        Int8Scheme.with_options = with_options
        tflite_export.PIXEL_GRID = True
    v = e["verification"]
    out = {"delta": v["delta_psnr_y"], "fp32": v["torch_psnr_y"], "psnr_vs_torch": v["psnr_vs_torch"],
           "verified": v["verified"], "seconds": round(time.perf_counter() - t0, 1),
           "per_image": v.get("per_image")}
    if e.get("qat_steps"):  # against the original fp32 student; the plain PTQ file and the tuned float's drift
        orig, ptq = e["qat"]["fp32_verification"], e["qat"]["ptq_verification"]
        out.update(delta=e["qat_delta_psnr_y"], fp32=orig["torch_psnr_y"], psnr_vs_torch=orig["psnr_vs_torch"],
                   ptq_delta=e["ptq_delta_psnr_y"], ptq_psnr_vs_torch=ptq["psnr_vs_torch"],
                   drift=round(v["torch_psnr_y"] - orig["torch_psnr_y"], 4), delta_vs_tuned=v["delta_psnr_y"])
    return out


def table(rows: list[dict], targets: list[str], variants: list[str], within: float | None = None) -> str:
    """Return the markdown table of ``rows``: one line per teacher and stage, one column per target x variant; a
    cell with rows of several seeds (``--more``) is their mean. ``within``: a last line counting the files whose
    loss is at most that many dB."""
    cols = [(t, v) for t in targets for v in variants]
    head = "| teacher | stage (blocks) | fp32 Y-PSNR | " + " | ".join(f"{t} {v}" for t, v in cols) + " |"
    lines = [head, "|---|---|---:|" + "---:|" * len(cols)]
    keys = sorted({(r["teacher"], r["blocks"]) for r in rows}, key=lambda k: (TEACHERS.index(k[0])
                                                                               if k[0] in TEACHERS else 99, k[1]))
    for teacher, blocks in keys:
        mine = [r for r in rows if (r["teacher"], r["blocks"]) == (teacher, blocks)]
        got = {c: [r["delta"] for r in mine if (r["target"], r["variant"]) == c] for c in cols}
        fp32 = statistics.mean(r["fp32"] for r in mine)
        cells = [f"{statistics.mean(got[c]):+.3f}" if got[c] else "-" for c in cols]
        lines.append(f"| {teacher} | {blocks} | {fp32:.3f} | " + " | ".join(cells) + " |")
    means: list[str] = []
    counts: list[str] = []
    for t, v in cols:  # the mean over the files that have this column, and how many
        got = [r["delta"] for r in rows if (r["target"], r["variant"]) == (t, v)]
        means.append(f"**{statistics.mean(got):+.3f}** (n={len(got)})" if got else "-")
        counts.append(f"{sum(d >= -within for d in got)}/{len(got)}" if got and within is not None else "-")
    lines.append("| **mean** | | | " + " | ".join(means) + " |")
    if within is not None:
        lines.append(f"| within {within:g} dB | | | " + " | ".join(counts) + " |")
    return "\n".join(lines)


def independent_loss(gap: float) -> float:
    """Return the Y-PSNR loss (dB, positive) that a file's deviation from the student would cost if it were
    independent of the student's own error: ``10 log10(1 + 10^(-gap/10))``, ``gap`` = the file's PSNR against the
    student minus the student's PSNR against the ground truth (MSE_file = MSE_student + MSE_deviation)."""
    return 10 * math.log10(1 + 10 ** (-gap / 10))


def fidelity_table(rows: list[dict], bins: tuple[float, ...] = (18, 21, 24)) -> str:
    """Return a markdown table of the int8 loss against the fidelity gap (``psnr_vs_torch`` - fp32 Y-PSNR), binned
    by gap: files, files within 0.03 dB, mean loss and the mean loss the independent-error model predicts."""
    pts = [(r["psnr_vs_torch"] - r["fp32"], -r["delta"]) for r in rows if r["variant"].startswith(("int8", "w8a16"))]
    edges = (-math.inf, *bins, math.inf)
    lines = ["| gap (dB) | files | within 0.03 dB | mean loss (dB) | independent-error loss (dB) |",
             "|---|---:|---:|---:|---:|"]
    for lo, hi in zip(edges, edges[1:]):
        sel = [(g, loss) for g, loss in pts if lo <= g < hi]
        if not sel:
            continue
        name = f"< {hi:g}" if lo == -math.inf else f">= {lo:g}" if hi == math.inf else f"{lo:g}-{hi:g}"
        lines.append(f"| {name} | {len(sel)} | {sum(loss <= 0.03 for _, loss in sel)} | "
                     f"{statistics.mean(loss for _, loss in sel):.3f} | "
                     f"{statistics.mean(independent_loss(g) for g, _ in sel):.3f} |")
    if len(pts) > 2:
        lines.append(f"\nPearson r(gap, loss) = {statistics.correlation(*zip(*pts)):.2f} over {len(pts)} files.")
    return "\n".join(lines)


def worst_image(row: dict) -> tuple[str, float, float]:
    """Return (the image where ``row``'s file loses most, the student's Y-PSNR there, the file's delta there) from
    the row's ``per_image`` record."""
    per = {n: (r["torch_psnr_y"], r["psnr_y"] - r["torch_psnr_y"]) for n, r in row["per_image"].items()}
    name = min(per, key=lambda n: per[n][1])
    return name, per[name][0], per[name][1]


def without(row: dict, image: str) -> float:
    """Return ``row``'s mean delta over its ``per_image`` images other than ``image``."""
    return statistics.mean(r["psnr_y"] - r["torch_psnr_y"] for n, r in row["per_image"].items() if n != image)


def pooled(row: dict) -> float:
    """Return ``row``'s Y-PSNR delta (dB) with the squared errors of all its ``per_image`` images pooled (the PSNR of
    the summed MSE, each image weighted by its error) instead of the mean of per-image PSNRs."""
    per = row["per_image"].values()
    student, file = (sum(10 ** (-r[k] / 10) for r in per) for k in ("torch_psnr_y", "psnr_y"))
    return 10 * math.log10(student / file)


def per_image_table(rows: list[dict], within: float = 0.03, leave_out: str = "ladybird") -> str:
    """Return a markdown table per target and variant (means over the rows of each teacher and stage, i.e. over
    seeds): the delta, the worst image's delta and the student's Y-PSNR on it, the delta over the images other
    than ``leave_out``; then per target and variant the files within ``within`` dB on all images and without
    ``leave_out``, on how many files ``leave_out`` is the worst image, its median share of a losing file's
    summed loss, and the files within ``within`` dB by the pooled-MSE delta (:func:`pooled`)."""
    rows = [r for r in rows if r.get("per_image")]
    out = ["| teacher | blocks | target variant | files | delta | worst image: name (student Y-PSNR), delta | "
           f"delta without {leave_out} |", "|---|---:|---|---:|---:|---|---:|"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["variant"], r["teacher"], r["blocks"]), []).append(r)
    order = sorted(groups, key=lambda k: (k[0], k[1], TEACHERS.index(k[2]) if k[2] in TEACHERS else 99, k[3]))
    for key in order:
        rs, worst = groups[key], [worst_image(r) for r in groups[key]]
        names = sorted({w[0] for w in worst})
        out.append(f"| {key[2]} | {key[3]} | {key[0]} {key[1]} | {len(rs)} | "
                   f"{statistics.mean(r['delta'] for r in rs):+.4f} | {'/'.join(names)} "
                   f"({statistics.mean(w[1] for w in worst):.2f}), {statistics.mean(w[2] for w in worst):+.3f} | "
                   f"{statistics.mean(without(r, leave_out) for r in rs):+.4f} |")
    out += ["", f"| target variant | files | within {within:g} dB | within {within:g} dB without {leave_out} | "
                f"{leave_out} the worst image | its median share of the loss (files that lose) | "
                f"within {within:g} dB, pooled MSE |", "|---|---:|---:|---:|---:|---:|---:|"]
    for tv in sorted({k[:2] for k in groups}):
        rs = [r for k in order if k[:2] == tv for r in groups[k]]
        share = []
        for r in rs:
            d = {n: v["psnr_y"] - v["torch_psnr_y"] for n, v in r["per_image"].items()}
            if sum(d.values()) < 0 and leave_out in d:
                share.append(d[leave_out] / sum(d.values()))
        out.append(f"| {tv[0]} {tv[1]} | {len(rs)} | {sum(r['delta'] >= -within for r in rs)} | "
                   f"{sum(without(r, leave_out) >= -within for r in rs)} | "
                   f"{sum(worst_image(r)[0] == leave_out for r in rs)} | "
                   f"{statistics.median(share):.0%} ({len(share)}) | {sum(pooled(r) >= -within for r in rs)} |")
    return "\n".join(out)


def paired(rows: list[dict], base: str, new: str) -> str:
    """Return a markdown table comparing variant ``new`` with ``base`` file by file (same result file, teacher,
    stage and target): files where ``new``'s delta is higher, where its loss is smaller, the mean and largest
    changes, the RGB PSNR against the student (``psnr_vs_torch``) gained, the files within 0.03 dB, the worst file,
    and the mean change per teacher."""
    key = {(r.get("src", 0), r["teacher"], r["stage"], r["target"], r["variant"]): r for r in rows}
    pairs = [(r, key[k[:4] + (new,)]) for k, r in key.items() if k[4] == base and k[:4] + (new,) in key]
    if not pairs:
        return f"no files with both {base!r} and {new!r}"
    gain = [b["delta"] - a["delta"] for a, b in pairs]
    closer = [b["psnr_vs_torch"] - a["psnr_vs_torch"] for a, b in pairs]
    per_teacher: dict[str, list[float]] = {}
    for (a, _), g in zip(pairs, gain):
        per_teacher.setdefault(a["teacher"], []).append(g)
    n = len(pairs)
    rows_md = [("files", n), ("delta higher", sum(g > 0 for g in gain)),
               ("loss smaller (abs delta)", sum(abs(b["delta"]) < abs(a["delta"]) for a, b in pairs)),
               ("mean delta change (dB)", f"{statistics.mean(gain):+.4f}"),
               ("largest drop (dB)", f"{min(gain):+.4f}"),
               ("RGB PSNR vs student: mean / least change (dB)",
                f"{statistics.mean(closer):+.2f} / {min(closer):+.2f}"),
               ("closer to the student", sum(c > 0 for c in closer)),
               ("within 0.03 dB", f"{sum(a['delta'] >= -0.03 for a, _ in pairs)} -> "
                                  f"{sum(b['delta'] >= -0.03 for _, b in pairs)}"),
               ("worst file (dB)",
                f"{min(a['delta'] for a, _ in pairs):+.3f} -> {min(b['delta'] for _, b in pairs):+.3f}"),
               ("mean change per teacher (dB)", ", ".join(f"{t} {statistics.mean(v):+.4f}"
                                                         for t, v in per_teacher.items()))]
    return "\n".join([f"| {base} -> {new} | |", "|---|---|", *(f"| {k} | {v} |" for k, v in rows_md)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--panel", type=Path, required=True, help="folder of TEACHER/RUN distill runs")
    ap.add_argument("--run-name", default="default_datafree_300_s0")
    ap.add_argument("--teachers", nargs="+", default=list(TEACHERS))
    ap.add_argument("--targets", nargs="+", default=["onnx", "tflite"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--columns", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), help="of the table")
    ap.add_argument("--out", type=Path, required=True, help="JSON lines file of results (appended, resumable)")
    ap.add_argument("--blocks", nargs="+", type=int, default=None, help="only the stages with these block counts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summarize-only", action="store_true")
    ap.add_argument("--more", nargs="+", type=Path, default=[],
                    help="result files of other seeds' runs (--run-name), tabulated with --out's: each cell their mean")
    ap.add_argument("--within", type=float, default=None, help="count the files that lose at most this many dB")
    ap.add_argument("--paired", nargs=2, action="append", default=[], metavar=("BASE", "NEW"),
                    help="also compare variant NEW with BASE file by file (repeatable; BENCHMARKS 29)")
    ap.add_argument("--per-image", action="store_true",
                    help="also tabulate each file's loss on its worst image and without --leave-out (BENCHMARKS 31)")
    ap.add_argument("--leave-out", default="ladybird", help="--per-image: the image left out [default: ladybird]")
    ap.add_argument("--fidelity", action="store_true",
                    help="also tabulate the loss against the file's fidelity gap to the student (BENCHMARKS 25)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    rows = [json.loads(ln) for ln in args.out.read_text().splitlines()] if args.out.exists() else []
    done = {(r["teacher"], r["stage"], r["target"], r["variant"]) for r in rows}
    more = [{**json.loads(ln), "src": i + 1} for i, f in enumerate(args.more) for ln in f.read_text().splitlines()]
    for teacher in [] if args.summarize_only else args.teachers:
        run_dir = args.panel / teacher / args.run_name
        if not (run_dir / "run.json").exists():
            print(f"{teacher}: no run at {run_dir}", flush=True)
            continue
        run = RunDir.open(run_dir)
        for stage in sorted(run.stages):
            blocks = run.stage_record(stage).get("n_blocks", stage)
            if args.blocks and blocks not in args.blocks:
                continue
            for target in args.targets:
                for variant in args.variants:
                    if (teacher, stage, target, variant) in done:
                        continue
                    r = {"teacher": teacher, "stage": stage, "blocks": blocks, "target": target, "variant": variant,
                         **measure(run_dir, stage, target, variant)}
                    rows.append(r)
                    with args.out.open("a") as f:
                        f.write(json.dumps(r) + "\n")
                    print(json.dumps(r), flush=True)
    rows += more
    print(table(rows, args.targets, args.columns, args.within))
    for base, new in args.paired:
        print(paired([r for r in rows if r["target"] in args.targets], base, new))
    if args.per_image:
        print(per_image_table([r for r in rows if r["variant"] in args.columns and r["target"] in args.targets],
                              0.03 if args.within is None else args.within, args.leave_out))
    if args.fidelity:
        print(fidelity_table([r for r in rows if r["variant"] in args.columns and r["target"] in args.targets]))


if __name__ == "__main__":
    main()
