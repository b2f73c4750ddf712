"""Would learned activation ranges (LSQ) beat ``--qat``'s frozen ones? (issue 20 item 4, a simulation screen)

``--qat`` freezes every activation range at the file's own calibration rule before the first step and learns the
weights only; the export then recalibrates the tuned student. Learned step sizes (LSQ, Esser et al. 2020) train
each per-tensor scale with the weights instead. This screen asks whether that would pay before anything writes
learned ranges into a file (ONNX TensorQuantOverrides, PT2E observer ranges): it scores the fake-quantized
student (:class:`~sr_shrink.export.qat.QATStudent`, faithful to the real files to about 0.005 dB:
``benchmarks/int8_fakequant.py``) on the bundled eval split, minus the original fp32 student's Y-PSNR, for

- ``ptq``: the original student at the rule's ranges (what plain int8 gives);
- ``qat``: ``--qat STEPS`` as the export runs it (student target, frozen ranges, lr 1e-5), the tuned student
  recalibrated by the same rule, as the export recalibrates it;
- ``lsq``: the same fine-tuning, but every enabled range's scale is a parameter too (its log, Adam at
  ``--scale-lr``; the integer zero point stays where calibration put it, so the range scales about its zero),
  through ``torch._fake_quantize_learnable_per_tensor_affine`` (LSQ's gradient); scored at the learned ranges
  (a file with the ranges written in) and recalibrated (a file without them).

    OMP_NUM_THREADS=1 python benchmarks/qat_learned_ranges.py RUN/stage_02.pt --scheme onnx --steps 1000
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.distill.sources import Labeller  # noqa: E402
from sr_shrink.distill.train import kd_step, schedule  # noqa: E402
from sr_shrink.evaluate import evaluate_model  # noqa: E402
from sr_shrink.export import qat  # noqa: E402
from sr_shrink.export.calib import calib_inputs, calib_source  # noqa: E402
from sr_shrink.export.options import auto_calib_samples  # noqa: E402
from sr_shrink.models.student import load_student  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402

SCHEMES = {"onnx": dict(weight_max=64, float_ends=True), "tflite": dict(weight_max=127, float_ends=False),
           "onnx-both": dict(weight_max=127, float_ends=True, float_stream=True)}  # --no-reduce-range --float-stream
RULES = {"onnx": "percentile", "tflite": "histogram", "onnx-both": "percentile"}


def _learnable_forward(self: qat.ActQuant, x: torch.Tensor) -> torch.Tensor:
    if not self.enabled:
        return x
    scale = (self.scale0 * self.log_gain.exp()).reshape(1)
    return torch._fake_quantize_learnable_per_tensor_affine(x, scale, self.zero0, qat.INT8_A[0], qat.INT8_A[1], 1.0)


def make_learnable(model: qat.QATStudent) -> list[nn.Parameter]:
    """Turn every enabled, frozen fake-quant point of ``model`` into a learned-scale one (LSQ, zero point kept);
    return the new parameters (one log-gain per point, 0 = the calibrated scale)."""
    params = []
    for m in model.modules():
        if isinstance(m, qat.ActQuant) and m.enabled and m.frozen:
            scale = float((m.hi - m.lo) / (qat.INT8_A[1] - qat.INT8_A[0]))
            zero = min(max(qat.INT8_A[0] - round(float(m.lo) / scale), qat.INT8_A[0]), qat.INT8_A[1])
            m.register_buffer("scale0", torch.tensor(scale))
            m.register_buffer("zero0", torch.tensor([float(zero)]))
            m.log_gain = nn.Parameter(torch.zeros(()))
            m.forward = types.MethodType(_learnable_forward, m)
            params.append(m.log_gain)
    return params


def lsq_finetune(student, run: RunDir, calib, steps: int, lr: float, scale_lr: float, opts: dict, rule: str,
                 seed: int = 0) -> tuple[qat.QATStudent, list[float]]:
    """Return (the QATStudent fine-tuned with learned activation scales against ``student``, the learned gains)."""
    torch.manual_seed(seed)
    model = qat.QATStudent(student, True, **opts).train()
    qat.freeze_ranges(model, calib, rule)
    gains = make_learnable(model)
    label = Labeller(student.eval(), torch.device("cpu"))
    source = qat.DataFreeInputs(run, student.scale, None, seed).source(label)
    opt = torch.optim.Adam([{"params": list(model.net.parameters()), "lr": lr},
                            {"params": gains, "lr": scale_lr}])
    sched = schedule(opt, steps)  # distill's cosine, as --qat's
    for step in range(steps):
        if step % 2 == 0:  # --qat's reuse (2) and batch
            x, target = source.refill(qat.BATCH)
        kd_step(model, opt, x, target)
        sched.step()
    return model.eval(), [round(float(g.detach().exp()), 3) for g in gains]


def screen(path: Path, args, opts: dict, rule: str) -> None:
    """Print one table row per ``--scale-lr`` for the student at ``path``."""
    st, _ = load_student(path)
    run = RunDir.open(path.parent)
    pairs = load_eval_set(st.scale)
    size = (256, 256) if args.scheme == "tflite" else None  # each target's calibration size
    calib = calib_inputs(calib_source(run, None), st.scale, auto_calib_samples(size), size, 0)
    base = evaluate_model(st, pairs, st.scale)["psnr_y"]

    def delta(model) -> float:
        return evaluate_model(model, pairs, st.scale)["psnr_y"] - base

    def recalibrated(net) -> qat.QATStudent:
        q = qat.QATStudent(net, True, **opts).eval()
        qat.freeze_ranges(q, calib, rule)
        return q

    ptq = delta(recalibrated(st))
    cfg = qat.QATConfig(args.steps, lr=args.lr, target="student", ranges=rule, **opts)
    tuned, _ = qat.finetune(st, st, qat.DataFreeInputs(run, st.scale, None, 0), cfg, calib)
    frozen = delta(recalibrated(tuned))
    for scale_lr in args.scale_lr:
        model, gains = lsq_finetune(st, run, calib, args.steps, args.lr, scale_lr, opts, rule)
        with torch.no_grad():
            learned = delta(model)
        recal = delta(recalibrated(model.student()))
        print(f"| {path} | {base:.3f} | {ptq:+.4f} | {frozen:+.4f} | {scale_lr:g} | {learned:+.4f} | {recal:+.4f} "
              f"| {min(gains):.3f}..{max(gains):.3f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stages", nargs="+", type=Path, help="stage_XX.pt files of distill runs with generator.pt")
    ap.add_argument("--scheme", choices=tuple(SCHEMES), default="onnx")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--scale-lr", type=float, nargs="+", default=[1e-3])
    args = ap.parse_args()
    torch.set_num_threads(1)
    opts, rule = SCHEMES[args.scheme], RULES[args.scheme]
    print(f"{args.scheme} scheme, {rule} ranges, {args.steps} steps, lr {args.lr:g}\n")
    print("| stage | fp32 Y-PSNR | ptq | qat (recalibrated) | scale lr | lsq (learned ranges) | lsq (recalibrated) "
          "| learned gains min..max |\n|---|---:|---:|---:|---:|---:|---:|---|", flush=True)
    for path in args.stages:
        screen(path, args, opts, rule)

if __name__ == "__main__":
    main()
