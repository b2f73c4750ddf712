"""Data-free QAT aimed at the ONNX int8 file's own ranges (issue 20 item 4): does it close the int8 gap?

Section 11's ``--qat`` fake-quantizes with EMA min/max ranges while the export calibrates 99.99-percentile ranges,
and fine-tunes against the teacher, which moves the float student. This screen changes both:

- the activation ranges are **frozen** at the export's own rule: two-sided 99.99 percentile (0.005 % cut at each
  end, widened to hold 0, as onnxruntime's percentile calibrator cuts its histogram; exact values here) of the
  float student's values at every Q/DQ point, over the export's default calibration inputs (128 generator samples);
- the target is the **fp32 student itself** (its output on the run's data-free inputs), so the float function
  should stay put and only its robustness to the file's rounding changes (``--target teacher``: the run's teacher).

The fine-tuned student is exported to fp32 ONNX and quantized by the export's call (``int8_onnx_variants.quantize``,
default scheme, or with ``--no-reduce-range`` / ``--float-stream``); every figure is a real onnxruntime file's
Y-PSNR on the bundled eval split minus the **original** fp32 student's (what a user compares), next to the plain
PTQ file of the original student and the float drift of the tuned student.

``--seeds`` repeats the fine-tuning with other QAT seeds (its own spread); ``--inputs eval-photos`` is an oracle:
it fine-tunes on crops of the very photos the files are scored on, the upper bound of what better QAT inputs
could give.

    OMP_NUM_THREADS=1 python benchmarks/qat_fixed_ranges.py RUN/stage_02.pt --steps 1000 --lr 1e-5 3e-5
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

import onnx
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from int8_onnx_variants import quantize  # noqa: E402

from sr_shrink.data import EVAL_DIR, load_eval_set  # noqa: E402
from sr_shrink.distill.losses import kd_loss  # noqa: E402
from sr_shrink.distill.sources import Labeller, PhotoSource  # noqa: E402
from sr_shrink.distill.sources.photos import RealPatches  # noqa: E402
from sr_shrink.distill.train import kd_step  # noqa: E402
from sr_shrink.evaluate import evaluate_model  # noqa: E402
from sr_shrink.export import export_run  # noqa: E402
from sr_shrink.export.calib import calib_inputs, calib_source  # noqa: E402
from sr_shrink.export.qat import DataFreeInputs, QATConfig  # noqa: E402
from sr_shrink.export.qat import finetune as qat_finetune  # noqa: E402
from sr_shrink.export.verify import verify  # noqa: E402
from sr_shrink.models.student import load_student  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402
from sr_shrink.runtimes import open_runner  # noqa: E402


class EvalPhotoInputs:
    """``--inputs eval-photos``, an oracle: random LR crops of the bundled eval split, the very photos the files
    are scored on, at the run's LR patch size; the upper bound of what QAT inputs can do, not a data-free recipe."""

    def __init__(self, scale: int, patch: int, seed: int):
        self.photos, self.patch = RealPatches(EVAL_DIR, scale, patch), patch
        self.g = torch.Generator().manual_seed(seed)

    def describe(self) -> dict:
        """Return the record of the inputs."""
        return {"source": "the eval photos (oracle)", "lr_patch": self.patch}

    def source(self, label: Labeller) -> PhotoSource:
        """Return the source of (eval-photo crop, ``label``'s output) batches."""
        return PhotoSource(self.photos, False, self.g, label)


def finetune(student, label_net, run: RunDir, calib, steps: int, lr: float, weight_max: int, float_stream: bool,
             seed: int = 0, hold_float: float = 0.0, bounded: bool = False, mix: float | None = None,
             photos: bool = False):
    """Return the float student fine-tuned for ``steps`` with frozen export ranges against ``label_net``: the
    export's own ``--qat`` fine-tuning (:func:`sr_shrink.export.qat.finetune`; ``bounded``: rounding only), with
    ``hold_float`` > 0 that weight times the float forward's L1 to the same target added to the loss, and with
    ``photos`` on crops of the eval photos instead of the run's data-free inputs (:class:`EvalPhotoInputs`)."""
    inputs = DataFreeInputs(run, student.scale, None, seed)
    if mix is not None:  # the synthetic share of the inputs instead of the run's
        inputs.mix = mix
    if photos:
        inputs = EvalPhotoInputs(student.scale, inputs.patch, seed)

    def hold_step(model, opt, x, target) -> float:
        loss = kd_loss(model(x), target) + hold_float * kd_loss(model.net(x), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    cfg = QATConfig(steps, lr=lr, seed=seed, weight_max=weight_max, float_ends=True, float_stream=float_stream,
                    target="student", ranges="percentile", bounded=bounded)
    return qat_finetune(student, label_net, inputs, cfg, calib, step_fn=hold_step if hold_float else kd_step)[0]


def int8_delta(run_dir: Path, stage: int, ckpt: dict, tuned, original, calib, pairs, tmp: Path, tag: str,
               reduce_range: bool, float_stream: bool) -> tuple[float, float]:
    """Export ``tuned`` (None: the original) to ONNX int8 by the export's scheme; return (its Y-PSNR minus the
    original fp32 student's on ``pairs``, RGB PSNR against the original's output)."""
    work = tmp / tag
    shutil.copytree(run_dir, work, ignore=shutil.ignore_patterns("exports", "*.onnx", "*.tflite", "*.mlpackage"))
    if tuned is not None:
        c = dict(ckpt, state_dict=tuned.state_dict())
        torch.save(c, work / f"stage_{stage:02d}.pt")
    src = export_run(work, "onnx", stage=stage, precision="fp32", out=work / "x", eval_images=1)[0]["path"]
    dst = work / "int8.onnx"
    quantize(src, dst, onnx.load(src), calib, reduce_range=reduce_range, stream=not float_stream)
    v = verify(open_runner(dst), original, pairs, original.scale, None, "int8", "onnxruntime")
    return v["delta_psnr_y"], v["psnr_vs_torch"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stages", nargs="+", type=Path, help="stage_XX.pt files of distill runs with generator.pt")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, nargs="+", default=[1e-5])
    ap.add_argument("--target", choices=("student", "teacher"), default="student")
    ap.add_argument("--no-reduce-range", action="store_true", help="8-bit weights (and QAT at [-127, 127])")
    ap.add_argument("--float-stream", action="store_true")
    ap.add_argument("--hold-float", type=float, default=0.0,
                    help="weight of the float forward's L1 to the same target, added to the QAT loss (0: off)")
    ap.add_argument("--mix", type=float, default=None, help="synthetic share of the QAT inputs [default: the run's]")
    ap.add_argument("--bounded", action="store_true", help="rounding only: weights within half a step (RoundingBox)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="QAT seeds (inputs and batches)")
    ap.add_argument("--inputs", choices=("datafree", "eval-photos"), default="datafree",
                    help="QAT inputs: the run's data-free ones, or (an oracle) crops of the eval photos scored")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rr, fs = not args.no_reduce_range, args.float_stream
    print(f"scheme: {'7-bit' if rr else '8-bit'} weights{', float stream' if fs else ''}; QAT target {args.target}, "
          f"{args.steps} steps, hold-float {args.hold_float:g}{', bounded' if args.bounded else ''}"
          f"{f', synthetic share {args.mix:g}' if args.mix is not None else ''}, inputs {args.inputs}\n")
    print("| stage | fp32 Y-PSNR | PTQ delta (RGB PSNR) | lr | QAT seed | QAT delta (RGB PSNR) | float drift |\n"
          "|---|---:|---:|---:|---:|---:|---:|", flush=True)
    for stage_path in args.stages:
        original, ckpt = load_student(stage_path)
        run = RunDir.open(stage_path.parent)
        stage = int(stage_path.stem.split("_")[-1])
        pairs = load_eval_set(original.scale)
        calib = calib_inputs(calib_source(run, None), original.scale, 128, None, 0)
        base = evaluate_model(original, pairs, original.scale)["psnr_y"]
        label = original if args.target == "student" else run.load_teacher(original.scale).net  # QATStudent copies
        with tempfile.TemporaryDirectory() as t:
            tmp = Path(t)
            ptq = int8_delta(stage_path.parent, stage, ckpt, None, original, calib, pairs, tmp, "ptq", rr, fs)
            for lr in args.lr:
                for seed in args.seeds:
                    tuned = finetune(original, label, run, calib, args.steps, lr, 64 if rr else 127, fs, seed=seed,
                                     hold_float=args.hold_float, bounded=args.bounded, mix=args.mix,
                                     photos=args.inputs == "eval-photos")
                    drift = evaluate_model(tuned, pairs, original.scale)["psnr_y"] - base
                    qat = int8_delta(stage_path.parent, stage, ckpt, tuned, original, calib, pairs, tmp,
                                     f"qat{lr}_{seed}", rr, fs)
                    print(f"| {stage_path} | {base:.3f} | {ptq[0]:+.3f} ({ptq[1]:.1f}) | {lr:g} | {seed} "
                          f"| {qat[0]:+.3f} ({qat[1]:.1f}) | {drift:+.3f} |", flush=True)


if __name__ == "__main__":
    main()
