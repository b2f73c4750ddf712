"""Could a TFLite file keep the residual stream float, as ONNX's ``--float-stream`` does? (issue 20 item 4, a screen)

Exports a panel student's stage with TFLite int8 (today's default file) and with parts of the PT2E graph left
unquantized before litert-torch converts it, and prints each file's Y-PSNR delta against the fp32 student
(``verification.delta_psnr_y``, the bundled eval split) and its RGB PSNR against the student:

- ``default``: every activation int8 (the file ``export --target tflite --precision int8`` writes);
- ``fs``: the residual Adds float (every Add but the last, the anchor's, which stays on the pixel grid): each
  block's first conv reads a rounded copy of the stream, as ONNX ``--float-stream``;
- ``fsh``: ``fs`` and the head conv's output float too (ONNX ``--float-first-conv`` reads it unrounded);
- ``fsall``: ``fsh`` and every conv output that feeds a residual Add float: only the conv inputs and the ReLU
  outputs are rounded to int8 - the most a file can keep float and still run its convs on int8 inputs.

The variants are made by removing PT2E annotations (the converter then writes DEQUANTIZE / float ADD / QUANTIZE);
nothing here changes the exporter. The run folder is read only (exported from a copy).

    OMP_NUM_THREADS=1 python benchmarks/tflite_float_stream.py ../panel_runs/panel/span_x2/default_datafree_300_s0 \
        --stages 1 2 --variants default fs fsh fsall
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.export import export_run  # noqa: E402

VARIANTS = ("default", "fs", "fsh", "fsall")


def float_parts_quantizer(variant: str):
    """Return a PT2EQuantizer class that annotates as litert-torch's, then leaves ``variant``'s parts float."""
    from litert_torch.quantize import pt2e_quantizer as pq

    base = pq.PT2EQuantizer

    class FloatParts(base):
        def annotate(self, model):
            model = super().annotate(model)
            nodes = [n for n in model.graph.nodes if n.op == "call_function"]
            adds = [n for n in nodes if "add" in str(n.target)][:-1]  # the anchor's Add stays int8 (pixel grid)
            convs = [n for n in nodes if "conv" in str(n.target)]
            for n in adds:
                n.meta.pop("quantization_annotation", None)
            float_out = ([convs[0]] if variant in ("fsh", "fsall") else []) + (
                [c for n in adds for c in n.all_input_nodes if "conv" in str(c.target)] if variant == "fsall" else [])
            for c in float_out:
                ann = c.meta.get("quantization_annotation")
                if ann is not None:
                    ann.output_qspec = None
            return model

    return base, FloatParts


def export_variant(run: Path, stage: int, variant: str) -> dict:
    """Return the export.json entry of ``run``'s ``stage`` exported to TFLite int8 as ``variant``."""
    from litert_torch.quantize import pt2e_quantizer as pq

    base, patched = float_parts_quantizer(variant)
    if variant != "default":
        pq.PT2EQuantizer = patched
    try:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / run.name
            shutil.copytree(run, copy, ignore=shutil.ignore_patterns("exports"))
            return export_run(copy, "tflite", stage=stage, precision="int8")[0]
    finally:
        pq.PT2EQuantizer = base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="panel run folders (stage_XX.pt, run.json)")
    ap.add_argument("--stages", nargs="+", type=int, default=[1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    args = ap.parse_args()
    print("| run | stage | " + " | ".join(args.variants) + " |")
    print("|---|---:|" + "---:|" * len(args.variants))
    for run in args.runs:
        for stage in args.stages:
            cells = []
            for variant in args.variants:
                v = export_variant(run, stage, variant)["verification"]
                cells.append(f"{v['delta_psnr_y']:+.3f} ({v.get('psnr_vs_torch', float('nan')):.1f})")
            print(f"| {run.parent.name}/{run.name} | {stage} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
