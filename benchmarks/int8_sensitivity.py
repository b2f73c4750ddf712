"""Which activation rounding of an ONNX int8 file costs the most: leave one Q/DQ point out at a time.

The stage is exported by the real exporter (``export_run``, ONNX int8 with the given scheme options and the tail
refit, which this needs); between onnxruntime's quantizer and the refit, the Quantize/DequantizeLinear pair of one
activation tensor is taken out (its readers read the float tensor; where the quantizer had folded a Relu into that
uint8 pair, the Relu is put back), so the file differs from the export only there. For each tensor (and for all
of them at once: int8 weights only) it prints the verification delta (file minus fp32 student, Y-PSNR on the
bundled eval split) and the delta on one image (``--image``, ladybird by default: the near-exact one,
BENCHMARKS.md section 31).

    OMP_NUM_THREADS=1 python benchmarks/int8_sensitivity.py RUN_DIR 2 --no-reduce-range --float-stream
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import onnx  # noqa: E402
from int8_panel import export_copy  # noqa: E402  (benchmarks/, the script's own folder)

import sr_shrink.export.onnx as onnx_export  # noqa: E402

ALL = "all activations (int8 weights only)"


def activation_points(proto) -> list[str]:
    """Return the names of the tensors a QuantizeLinear node rounds in ``proto``, weights and biases left out."""
    inits = {t.name for t in proto.graph.initializer}
    return [n.input[0] for n in proto.graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]


def leave_out(proto, fp32, names: set[str]) -> None:
    """Take the Q/DQ pair of each tensor of ``names`` out of the QDQ model ``proto`` in place (``fp32``: the float
    model it was quantized from, to find the Relus the quantizer folded into a uint8 pair)."""
    relus = {o for n in fp32.graph.node if n.op_type == "Relu" for o in n.output}
    g = proto.graph
    for q in [n for n in g.node if n.op_type == "QuantizeLinear" and n.input[0] in names]:
        src = q.input[0]
        if src in relus and not any(n.op_type == "Relu" and src in n.output for n in g.node):
            at = next(i for i, n in enumerate(g.node) if src in n.output)
            g.node.insert(at + 1, onnx.helper.make_node("Relu", [src], [src + "_relu"], name=src + "_relu"))
            src = src + "_relu"
        for dq in [n for n in g.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0]]:
            for n in g.node:
                for k, name in enumerate(n.input):
                    if name == dq.output[0]:
                        n.input[k] = src
            g.node.remove(dq)
        g.node.remove(q)


def measure(run: Path, stage: int, opts: dict, names: set[str] | str | None, image: str) -> tuple[dict, list[str]]:
    """Return (delta over the eval split and on ``image``, the file's activation points) of ``run``'s ``stage``
    exported with ``opts`` and the points ``names`` ("all": every one) left out."""
    refit, seen = onnx_export.refit_tail, {}

    def patched(out, proto, name, arrays):  # to_int8 refits the tail on the finished QDQ model: edit it first
        if "points" not in seen:
            seen["points"] = activation_points(out)
            if names:
                leave_out(out, proto, set(seen["points"]) if names == "all" else names)
        return refit(out, proto, name, arrays)

    onnx_export.refit_tail = patched
    try:
        e = export_copy(run, "onnx", stage, precision="int8", **opts)
    finally:
        onnx_export.refit_tail = refit
    v = e["verification"]
    one = v["per_image"][image]
    return {"delta": v["delta_psnr_y"], "image": one["psnr_y"] - one["torch_psnr_y"]}, seen["points"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("stage", type=int)
    ap.add_argument("--no-reduce-range", action="store_true")
    ap.add_argument("--float-stream", action="store_true")
    ap.add_argument("--image", default="ladybird")
    args = ap.parse_args()
    opts = dict(reduce_range=False if args.no_reduce_range else None, float_stream=args.float_stream)
    base, points = measure(args.run, args.stage, opts, None, args.image)
    print(f"| left out (float) | delta (dB) | gain (dB) | {args.image} delta (dB) |\n|---|---:|---:|---:|")
    print(f"| nothing (the export) | {base['delta']:+.4f} | | {base['image']:+.3f} |", flush=True)
    for names in ["all", *points]:
        r, _ = measure(args.run, args.stage, opts, names if names == "all" else {names}, args.image)
        label = ALL if names == "all" else names
        print(f"| {label} | {r['delta']:+.4f} | {r['delta'] - base['delta']:+.4f} | {r['image']:+.3f} |", flush=True)


if __name__ == "__main__":
    main()
