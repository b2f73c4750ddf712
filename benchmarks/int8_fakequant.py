"""How faithful is ``--qat``'s fake quantization to the real int8 files? (issue 20 item 4, a diagnostic)

For one collapsed student (``stage_XX.pt``), the Y-PSNR on the bundled eval split of :class:`QATStudent` with its
activation ranges frozen by each calibration rule (:func:`sr_shrink.export.qat.freeze_ranges`) over the export's
own calibration inputs, minus the fp32 student's: the ONNX scheme (7-bit weights, float head and tail, at the
export's default calibration size) or the TFLite scheme (every conv, 8-bit weights, 256x256 calibration). With
``--qat-steps N`` also the student after ``--qat N`` (student target), with the original's frozen ranges and
recalibrated ones, and its float drift. Compare with the real files' ``verification.delta_psnr_y`` and
``qat_delta_psnr_y`` (``benchmarks/int8_panel.py``).

    OMP_NUM_THREADS=1 python benchmarks/int8_fakequant.py RUN/stage_02.pt --scheme onnx --qat-steps 1000
    OMP_NUM_THREADS=1 python benchmarks/int8_fakequant.py RUN/stage_02.pt --scheme tflite
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.evaluate import evaluate_model  # noqa: E402
from sr_shrink.export.calib import calib_inputs, calib_source  # noqa: E402
from sr_shrink.export.options import auto_calib_samples  # noqa: E402
from sr_shrink.export.qat import ActQuant, DataFreeInputs, QATConfig, QATStudent, finetune, freeze_ranges  # noqa: E402
from sr_shrink.models.student import load_student  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402

SCHEMES = {"onnx": dict(weight_max=64, float_ends=True), "tflite": dict(weight_max=127, float_ends=False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", type=Path, help="a stage_XX.pt of a distill run (with generator.pt)")
    ap.add_argument("--scheme", choices=tuple(SCHEMES), default="onnx")
    ap.add_argument("--rules", nargs="+", default=["percentile", "histogram", "minmax"])
    ap.add_argument("--qat-steps", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    st, _ = load_student(args.stage)
    run = RunDir.open(args.stage.parent)
    pairs = load_eval_set(st.scale)
    size = (256, 256) if args.scheme == "tflite" else None
    calib = calib_inputs(calib_source(run, None), st.scale, auto_calib_samples(size), size, 0)
    base = evaluate_model(st, pairs, st.scale)["psnr_y"]
    opts = SCHEMES[args.scheme]

    def delta(model) -> str:
        return f"{evaluate_model(model, pairs, st.scale)['psnr_y'] - base:+.4f}"

    print(f"{args.stage} ({args.scheme} scheme, {len(calib)} calibration inputs of {tuple(calib[0].shape[1:])}), "
          f"fp32 {base:.3f}")
    frozen = {}
    for rule in args.rules:
        q = QATStudent(st, True, **opts).eval()
        ranges = freeze_ranges(q, calib, rule)
        frozen[rule] = q
        print(f"fake quant, {rule} ranges: {delta(q)} (head {ranges['head']}, body.0.add {ranges['body.0.add']})")
    print(f"weights only: {delta(QATStudent(st, False, **opts).eval())}")
    if args.qat_steps:
        rule = "percentile" if args.scheme == "onnx" else "histogram"
        cfg = QATConfig(args.qat_steps, lr=1e-5, target="student", ranges=rule, **opts)
        tuned, _ = finetune(st, st, DataFreeInputs(run, st.scale, None, 0), cfg, calib)
        q = QATStudent(tuned, True, **opts).eval()
        for a, b in zip((m for m in frozen[rule].modules() if isinstance(m, ActQuant)),
                        (m for m in q.modules() if isinstance(m, ActQuant))):
            b.enabled = a.enabled
            if a.frozen:
                b.freeze(float(a.lo), float(a.hi))
        print(f"after --qat {args.qat_steps}, the original's {rule} ranges: {delta(q)}")
        q = QATStudent(tuned, True, **opts).eval()
        freeze_ranges(q, calib, rule)
        print(f"after --qat {args.qat_steps}, recalibrated {rule} ranges: {delta(q)}; float drift {delta(tuned)}")


if __name__ == "__main__":
    main()
