"""Which activation rounding of a TFLite int8 file costs the most: PT2E's simulation, one rounding left out at a time.

The stage is exported by the real exporter (``export_run``, TFLite int8 with its defaults); the PT2E graph it
converts to the .tflite file (quantize/dequantize pairs around every int8 activation, run in torch) is kept and run
on the bundled eval images cut to the file's input size (the top-left crop, edge-padded where an image is
smaller). For each activation's quantize/dequantize pair (and for all of them at once: int8 weights only) it
prints how much of the 8-bit output's mean squared error against the fp32 student's 8-bit output goes away when
that one pair is taken out, over all images and on one (``--image``, ladybird by default: the near-exact one,
BENCHMARKS.md section 31). ``--no-pixel-grid`` exports as before section 35 (the tail and anchor convs' outputs
and the input at their observers' own ranges).

    OMP_NUM_THREADS=1 python benchmarks/tflite_int8_sensitivity.py RUN_DIR 2 [--no-pixel-grid]
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from int8_panel import export_copy  # noqa: E402  (benchmarks/, the script's own folder)

import sr_shrink.export.tflite as tflite_export  # noqa: E402
from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.metrics import quantize  # noqa: E402


def export_and_keep_graph(run: Path, stage: int) -> tuple[dict, torch.nn.Module, torch.fx.GraphModule]:
    """Return (the export.json entry, the float wrapper, the converted PT2E graph) of ``run``'s ``stage`` exported
    to TFLite int8 from a copy of the run."""
    kept, convert, to_int8 = {}, tflite_export._convert, tflite_export._export_int8

    def keep_convert(model, x, path, quant_config=None):
        if quant_config is not None:
            kept["graph"] = copy.deepcopy(model)
        return convert(model, x, path, quant_config)

    def keep_model(model, *args, **kwargs):
        kept["model"] = model
        return to_int8(model, *args, **kwargs)

    tflite_export._convert, tflite_export._export_int8 = keep_convert, keep_model
    try:
        entry = export_copy(run, "tflite", stage, precision="int8")
    finally:
        tflite_export._convert, tflite_export._export_int8 = convert, to_int8
    return entry, kept["model"], kept["graph"]


def without(graph: torch.fx.GraphModule, names: set[str]) -> torch.fx.GraphModule:
    """Return a copy of ``graph`` whose quantize nodes ``names`` (and their dequantize) are taken out."""
    g = copy.deepcopy(graph)
    for n in list(g.graph.nodes):
        if n.name in names:
            for user in list(n.users):
                if "dequantize" in str(user.target):
                    user.replace_all_uses_with(n.args[0])
    g.graph.eliminate_dead_code()
    g.recompile()
    return g


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("stage", type=int)
    ap.add_argument("--image", default="ladybird")
    ap.add_argument("--no-pixel-grid", action="store_true", help="the files before BENCHMARKS section 35")
    args = ap.parse_args()
    tflite_export.PIXEL_GRID = not args.no_pixel_grid
    entry, model, graph = export_and_keep_graph(args.run, args.stage)
    print(f"file: delta {entry['verification']['delta_psnr_y']:+.4f} dB against the student "
          f"(pixel grid: {entry['quantization'].get('pixel_grid', 'off')})")
    h, w = entry["input_size"]
    crops = {}
    for p in load_eval_set(model.scale):
        lr = p.lr[:, :h, :w][None]
        crops[p.name] = F.pad(lr, (0, w - lr.shape[-1], 0, h - lr.shape[-2]), mode="replicate")

    def outputs(g) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {n: quantize(g(x.permute(0, 2, 3, 1) if model.nhwc else x)) for n, x in crops.items()}

    ref = outputs(model)

    def mse(g) -> tuple[float, float]:
        out = outputs(g)
        per = {n: float(((out[n] - ref[n]) ** 2).mean()) for n in out}
        return sum(per.values()) / len(per), per[args.image]

    base = mse(graph)
    print(f"8-bit output MSE against the student's: {base[0]:.3e} over {len(crops)} images, {base[1]:.3e} on "
          f"{args.image}\n\nshare of it gone without one rounding (all images / {args.image}):")
    points = [n for n in graph.graph.nodes if n.op == "call_function" and "quantize_per_tensor" in str(n.target)
              and "dequantize" not in str(n.target)]
    for q in points:
        src, scale = q.args[0], q.args[1]
        gone = mse(without(graph, {q.name}))
        print(f"  {src.name:<14} {str(src.target):<22} scale {float(scale):.6f} ({float(scale) * 255:5.3f}/255)  "
              f"{(base[0] - gone[0]) / base[0]:+7.1%}  {(base[1] - gone[1]) / max(base[1], 1e-30):+7.1%}")
    gone = mse(without(graph, {q.name for q in points}))
    print(f"  all activations (int8 weights only): {(base[0] - gone[0]) / base[0]:+.1%} / "
          f"{(base[1] - gone[1]) / max(base[1], 1e-30):+.1%}")


if __name__ == "__main__":
    main()
