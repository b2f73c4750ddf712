"""ONNX int8 scheme variants of one stage checkpoint, as real ONNX Runtime QDQ files (issue 20 item 4).

The stage is exported once to fp32 ONNX (``export_run``), then quantized by ``onnxruntime.quantization.
quantize_static`` with one change at a time against the export's scheme (uint8 activations over 99.99-percentile
ranges, symmetric per-channel 7-bit int8 weights, head/tail/anchor convs float; ``export.onnx.INT8_SCHEME``), on the
export's default calibration inputs (128 of the run's generator samples); each file is verified with ONNX
Runtime against the fp32 student on the bundled eval split (``verification.delta_psnr_y``, whole images), and
the graph ORT runs is printed (QLinearConv count).

    OMP_NUM_THREADS=1 python benchmarks/int8_onnx_variants.py RUN/stage_02.pt [VARIANT ...] [--time ROUNDS]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx  # noqa: F401  (the extra must be installed)
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.deps import quiet  # noqa: E402
from sr_shrink.export import export_run  # noqa: E402
from sr_shrink.export.calib import calib_inputs, calib_source  # noqa: E402
from sr_shrink.export.onnx import float_end_convs, float_stream_skips, float_tail_nodes, ort_optimized_ops  # noqa: E402
from sr_shrink.export.verify import verify  # noqa: E402
from sr_shrink.models.student import load_student  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402
from sr_shrink.runtimes import open_runner  # noqa: E402

VARIANTS = {
    "export scheme (7-bit w, pct 99.99)": {},
    "8-bit weights (saturates on AVX2)": dict(reduce_range=False),
    "uint8 weights, full range (u8u8 kernels)": dict(weight="uint8", reduce_range=False),
    "per-tensor weights": dict(per_channel=False),
    "min/max ranges": dict(method="minmax"),
    "entropy ranges": dict(method="entropy"),
    "percentile 99.999": dict(percentile=99.999),
    "percentile 99.9": dict(percentile=99.9),
    "head/tail convs int8 too": dict(ends=False),
    "uint16 activations (min/max), 7-bit weights": dict(act="uint16", method="minmax"),
    "residual Adds float (float stream)": dict(stream=False),
    "float stream + 8-bit weights": dict(stream=False, reduce_range=False),
}


class Feed:
    """An onnxruntime CalibrationDataReader over a list of float32 arrays."""

    def __init__(self, arrays: list[np.ndarray]):
        self._it = iter([{"lr": a} for a in arrays])

    def get_next(self):
        """Return the next feed dict, or None at the end."""
        return next(self._it, None)


def quantize(src: str, dst: Path, proto, calib: list[torch.Tensor], act: str = "uint8", weight: str = "int8",
             reduce_range: bool = True, per_channel: bool = True, method: str = "percentile",
             percentile: float = 99.99, ends: bool = True, stream: bool = True) -> None:
    """Write the QDQ file of the fp32 ONNX ``src`` to ``dst`` with the given scheme changes (``stream=False``:
    every Add stays float and reads the float stream, as ``export --float-stream`` writes it)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    keep = float_tail_nodes(proto) + (float_end_convs(proto) if ends else [])
    keep = sorted(set(keep + ([] if stream else [n.name for n in proto.graph.node if n.op_type == "Add"])))
    methods = {"percentile": CalibrationMethod.Percentile, "minmax": CalibrationMethod.MinMax,
               "entropy": CalibrationMethod.Entropy}
    extra = {"WeightSymmetric": True, "ActivationSymmetric": False}
    if method == "percentile":
        extra["CalibPercentile"] = percentile
    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "uint16": QuantType.QUInt16}
    with quiet():
        quantize_static(src, str(dst), Feed([c.numpy().astype(np.float32) for c in calib]),
                        quant_format=QuantFormat.QDQ, activation_type=types[act], weight_type=types[weight],
                        per_channel=per_channel, reduce_range=reduce_range, nodes_to_exclude=keep,
                        calibrate_method=methods[method], extra_options=extra)
    if not stream:
        q = onnx.load(str(dst))
        float_stream_skips(q)
        onnx.save(q, str(dst))


def time_files(files: dict[str, Path], rounds: int, side: int = 256) -> dict[str, float]:
    """Return the median ms of one onnxruntime run (1 thread) of each file on a ``side`` x ``side`` LR input,
    the files interleaved in every round so machine noise hits them alike."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    sess = {k: ort.InferenceSession(str(v), so, providers=["CPUExecutionProvider"]) for k, v in files.items()}
    x = np.random.default_rng(0).random((1, 3, side, side), dtype=np.float32)
    times: dict[str, list[float]] = {k: [] for k in sess}
    for r in range(rounds + 1):  # the first round warms up
        for k, s in sess.items():
            t0 = time.perf_counter()
            s.run(None, {"lr": x})
            if r:
                times[k].append(time.perf_counter() - t0)
    return {k: 1000 * float(np.median(v)) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stage", type=Path, help="a stage_XX.pt of a distill run with generator.pt")
    ap.add_argument("variants", nargs="*", help="names of VARIANTS to run (default: all)")
    ap.add_argument("--time", type=int, default=0, metavar="ROUNDS",
                    help="also time each file and the fp32 one (1 thread, 256x256, median of ROUNDS interleaved runs)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    stage, wanted = args.stage, args.variants
    student, _ = load_student(stage)
    run = RunDir.open(stage.parent)
    pairs = load_eval_set(student.scale)
    calib = calib_inputs(calib_source(run, None), student.scale, 128, None, 0)
    with tempfile.TemporaryDirectory() as tmp:
        n = int(stage.stem.split("_")[-1])
        src = export_run(stage.parent, "onnx", stage=n, precision="fp32", out=Path(tmp), eval_images=1)[0]["path"]
        proto = onnx.load(src)
        files = {"fp32": Path(src)}
        print(f"| {stage} variant | delta Y-PSNR dB | PSNR vs student | QLinearConv |\n|---|---:|---:|---:|")
        for i, (name, kw) in enumerate(VARIANTS.items()):
            if wanted and name not in wanted:
                continue
            dst = files[name] = Path(tmp) / f"v{i}.onnx"
            quantize(src, dst, proto, calib, **kw)
            v = verify(open_runner(dst), student, pairs, student.scale, None, "int8", "onnxruntime")
            ops = ort_optimized_ops(dst)
            print(f"| {name} | {v['delta_psnr_y']:+.4f} | {v['psnr_vs_torch']:.2f} | {ops.get('QLinearConv', 0)} |",
                  flush=True)
        if args.time:
            ms = time_files(files, args.time)
            print("\n| file | ms (1 thread, 256x256) | x fp32 |\n|---|---:|---:|")
            for name, t in ms.items():
                print(f"| {name} | {t:.1f} | {t / ms['fp32']:.2f} |")


if __name__ == "__main__":
    main()
