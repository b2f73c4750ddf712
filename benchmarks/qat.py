"""PTQ vs data-free QAT: int8 Y-PSNR delta against the original fp32 student, per stage and target.

For each stage and target (ONNX QDQ, TFLite full-int8) this runs ``sr-shrink export --precision int8 --qat
STEPS`` through the API into its own folder (RUN_DIR/exports/qat_bench_<steps>/, so the run's own exports are
left alone) and prints, from the export.json entry, a markdown table:

- PTQ delta: Y-PSNR of the plain int8 export of the stage_XX.pt student minus that fp32 student's;
- QAT delta: Y-PSNR of the int8 export of the QAT fine-tuned student minus the same original fp32 student's;
- float delta: the fine-tuned float student minus the original (what the fine-tuning moved in float);
- fidelity: RGB PSNR of each int8 file's output against the original fp32 student's output (dB, higher = closer).

All on the verification images (the bundled eval split unless --eval), at the export's input size.

    python benchmarks/qat.py runs/demo --stages 1,4 --steps 2000
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_shrink.export import export_run  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402

TARGETS = {"onnx": "ONNX QDQ (onnxruntime)", "tflite": "TFLite full-int8 (LiteRT)"}


def _f(v, digits: int = 4) -> str:
    return "-" if v is None else f"{v:+.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path, help="a distill run folder (its teacher file at hand for --qat-target teacher)")
    ap.add_argument("--stages", default="last", help="comma list of stage numbers, or 'last' / 'all'")
    ap.add_argument("--targets", default="onnx,tflite")
    ap.add_argument("--steps", type=int, default=2000, help="QAT steps")
    ap.add_argument("--lr", type=float, default=None,
                    help="QAT learning rate [default: the export's, 1e-5 student target, 1e-4 teacher target]")
    ap.add_argument("--qat-target", choices=("student", "teacher"), default="student",
                    help="export --qat-target: the original fp32 student (frozen file ranges) or the teacher (EMA)")
    ap.add_argument("--input-size", default="256x256", help="LR input size of every export (HxW)")
    ap.add_argument("--eval", dest="eval_dir", default=None, help="verification images [default: bundled]")
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--calib-samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--self-distill", action="store_true",
                    help="teacher target with the fp32 student itself as --teacher (section 11's recipe, EMA ranges)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = RunDir.open(args.run)
    stages = run.select(args.stages) if args.stages in ("last", "all") else [int(s) for s in args.stages.split(",")]
    kind = "_self" if args.self_distill else "_teacher" if args.qat_target == "teacher" else ""
    out = run.exports_dir / f"qat_bench_{args.steps}{kind}"
    rows = []
    for target in args.targets.split(","):
        for stage in stages:
            t0 = time.perf_counter()
            e = export_run(run, target, stage=stage, precision="int8", out=out / target, qat_steps=args.steps,
                           qat_lr=args.lr, input_size=args.input_size, eval_dir=args.eval_dir,
                           eval_images=args.eval_images, calib_samples=args.calib_samples, seed=args.seed,
                           **({"teacher": str(run.stages[stage])} if args.self_distill else
                              {"qat_target": args.qat_target}))[0]
            q = e["qat"]
            ptq, fp = q.get("ptq_verification", {}), q.get("fp32_verification", {})
            float_delta = None if "torch_psnr_y" not in e["verification"] or "torch_psnr_y" not in fp else \
                e["verification"]["torch_psnr_y"] - fp["torch_psnr_y"]
            rows.append([f"{stage} ({e['n_blocks']} blk)", TARGETS.get(target, target), fp.get("torch_psnr_y", "-"),
                         _f(e["ptq_delta_psnr_y"]), _f(e["qat_delta_psnr_y"]), _f(float_delta),
                         f"{ptq.get('psnr_vs_torch', '-')} / {fp.get('psnr_vs_torch', '-')}",
                         "yes" if e["verified"] else "NO", f"{q['seconds']:.0f} / {time.perf_counter() - t0:.0f}"])
            print(f"done: stage {stage} {target}", file=sys.stderr, flush=True)
    label = "the fp32 student as --teacher" if args.self_distill else f"target {args.qat_target}"
    print(f"\nQAT {args.steps} steps (lr {args.lr or q['lr']:g}, batch 16, seed {args.seed}, {label}), "
          f"run {run.root}, input {args.input_size}\n")
    head = ["stage", "target", "fp32 Y-PSNR", "PTQ Δ dB", "QAT Δ dB", "QAT float Δ dB",
            "fidelity to fp32 PTQ / QAT (dB)", "QAT file verified", "QAT s / total s"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print("| " + " | ".join(str(c) for c in r) + " |")


if __name__ == "__main__":
    main()
