"""Compare ONNX Runtime int8 activation-range methods on one exported student (Y-PSNR delta vs fp32).

    python benchmarks/onnx_int8_calibration.py --onnx runs/export_quality/exports/stage_04_fp32.onnx --calib data/train
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.evaluate import evaluate_fn  # noqa: E402
from sr_shrink.export.calib import CalibSource, calib_inputs  # noqa: E402
from sr_shrink.export.onnx import float_tail_nodes  # noqa: E402

METHODS = {
    "MinMax": dict(method=CalibrationMethod.MinMax),
    "entropy": dict(method=CalibrationMethod.Entropy),
    "99.999th percentile": dict(method=CalibrationMethod.Percentile, extra={"CalibPercentile": 99.999}),
    "99.99th percentile": dict(method=CalibrationMethod.Percentile, extra={"CalibPercentile": 99.99}),
    "MinMax, first conv in float": dict(method=CalibrationMethod.MinMax, head_float=True),
    "16-bit activations (MinMax)": dict(method=CalibrationMethod.MinMax, act=QuantType.QUInt16),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--onnx", type=Path, required=True, help="an fp32 export of sr-shrink export")
    ap.add_argument("--calib", type=Path, required=True, help="folder of calibration photos")
    ap.add_argument("--samples", type=int, default=128)
    ap.add_argument("--scale", type=int, default=2)
    args = ap.parse_args()
    proto = onnx.load(str(args.onnx))
    name = proto.graph.input[0].name
    pairs = load_eval_set(args.scale)
    arrays = [c.numpy().astype(np.float32)
              for c in calib_inputs(CalibSource("images", args.calib), args.scale, args.samples, None, 0)]

    class Feed:
        def __init__(self):
            self.it = iter([{name: a} for a in arrays])

        def get_next(self):
            return next(self.it, None)

    def score(path: Path) -> float:
        so = ort.SessionOptions()
        so.intra_op_num_threads = 2
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return evaluate_fn(lambda x: torch.from_numpy(sess.run(None, {name: x.numpy()})[0]), pairs, args.scale)[
            "psnr_y"]

    base = score(args.onnx)
    keep = float_tail_nodes(proto)
    first_conv = next(n.name for n in proto.graph.node if n.op_type == "Conv")
    print(f"fp32 Y-PSNR {base:.4f}\n\n| ONNX int8 activation ranges | delta (dB) |\n|---|---|")
    for label, m in METHODS.items():
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / "q.onnx"
            quantize_static(str(args.onnx), str(dst), Feed(), quant_format=QuantFormat.QDQ,
                            activation_type=m.get("act", QuantType.QInt8), weight_type=QuantType.QInt8,
                            per_channel=True, nodes_to_exclude=keep + ([first_conv] if m.get("head_float") else []),
                            calibrate_method=m["method"],
                            extra_options={"WeightSymmetric": True, "ActivationSymmetric": False, **m.get("extra", {})})
            print(f"| {label} | {score(dst) - base:+.3f} |", flush=True)


if __name__ == "__main__":
    main()
