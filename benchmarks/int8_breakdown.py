"""Where a student's int8 loss comes from: fake-quantize one group of tensors at a time (issue 12, item 2).

For each stage checkpoint given, the collapsed student is run in PyTorch with int8 rounding at one group of the
exporters' quantization points only, and scored on the eval split against its own fp32 output (Y-PSNR delta
against ground truth, 8-bit outputs, as export.json's ``delta_psnr_y``). Ranges come from the run's data-free
calibration inputs (generator.pt samples, as the exports calibrate), as min/max or as a percentile.

Groups (the TFLite full-int8 scheme quantizes all of them; the ONNX scheme leaves the input, head, tail and
output float and uses 7-bit weights):

* ``weights``: every body conv weight, symmetric per channel; ``end weights``: the head and tail convs';
* ``input``: the LR input; ``head``: the head conv's output; ``relu``: each block's conv-ReLU output;
  ``conv2``: each block's second conv; ``add``: each block's residual sum; ``tail``: the tail conv's output;
* ``output``: the image itself (the last Add, before the pixel shuffle), what TFLite returns as int8;
  ``output clamped``: the same with a clamp to [0, 1] in the graph (so the range is [0, 1]).

    python benchmarks/int8_breakdown.py runs/blocks_x2/rep_s0/stage_04.pt runs/blocks_x2/rep_s1/stage_04.pt
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.evaluate import evaluate_fn  # noqa: E402
from sr_shrink.export.calib import calib_inputs, calib_source  # noqa: E402
from sr_shrink.export.equalize import equalize  # noqa: E402
from sr_shrink.export.qat import fake_quant_weight  # noqa: E402
from sr_shrink.models.student import SRStudent, load_student  # noqa: E402
from sr_shrink.run import RunDir  # noqa: E402

ACT_POINTS = ("input", "head", "relu", "conv2", "add", "tail", "output", "output clamped")
GROUPS = ("weights", "end weights") + ACT_POINTS


def _q(x: torch.Tensor, lo: float, hi: float, levels: int = 256) -> torch.Tensor:
    """Asymmetric per-tensor rounding of ``x`` to ``levels`` steps over [lo, hi] (which holds 0), and back."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (levels - 1), 1e-8)
    zero = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zero, 0, levels - 1) - zero) * scale


def _per_tensor(w: torch.Tensor, qmax: int) -> torch.Tensor:
    """Symmetric per-tensor rounding of ``w`` to [-qmax, qmax] and back."""
    scale = float(w.abs().max().clamp_min(1e-8)) / qmax
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


class Probe:
    """Runs a plain student, recording each activation point's values or rounding the chosen ones."""

    def __init__(self, student: SRStudent, quant: set[str], ranges: dict | None, weight_max: int = 127,
                 per_tensor: bool = False):
        self.s, self.quant, self.ranges, self.weight_max = student, quant, ranges, weight_max
        self.per_tensor = per_tensor
        self.seen: dict[str, list[torch.Tensor]] = {}

    def _point(self, name: str, x: torch.Tensor) -> torch.Tensor:
        group = name.split(".")[0]
        if self.ranges is None:
            self.seen.setdefault(name, []).append(x.detach().flatten()[::7])
            return x
        return _q(x, *self.ranges[name]) if group in self.quant else x

    def _conv(self, conv, x, end: bool = False):
        group = "end weights" if end else "weights"
        w = conv.weight
        if group in self.quant:
            w = _per_tensor(w, self.weight_max) if self.per_tensor else fake_quant_weight(w, self.weight_max)
        return F.conv2d(x, w, conv.bias, padding=1)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        s = self.s.scale
        x = self._point("input", x)
        feat = self._point("head", self._conv(self.s.head, x, end=True))
        for i, blk in enumerate(self.s.body):
            mid = self._point(f"relu.{i}", F.relu(self._conv(blk.conv1, feat)))
            feat = self._point(f"add.{i}", feat + self._point(f"conv2.{i}", self._conv(blk.conv2, mid)))
        out = self._point("tail", self._conv(self.s.tail, feat, end=True)) + x.repeat_interleave(s * s, dim=1)
        if "output clamped" in self.quant:
            out = _q(out.clamp(0, 1), 0.0, 1.0)
        else:
            out = self._point("output", out)
        return F.pixel_shuffle(out, s)


def mse_range(v: torch.Tensor, levels: int = 256, grid: int = 24) -> tuple[float, float]:
    """Return the (lo, hi) that minimise the mean-square error of rounding ``v`` with :func:`_q`: a grid search
    over both ends shrunk from the min/max (the MSE range setting of TensorRT / AIMET, per tensor)."""
    lo0, hi0 = min(float(v.min()), 0.0), max(float(v.max()), 0.0)
    fracs = torch.linspace(0.2, 1.0, grid).tolist()
    best = (float("inf"), lo0, hi0)
    for a in fracs if lo0 < 0 else [1.0]:
        for b in fracs if hi0 > 0 else [1.0]:
            lo, hi = lo0 * a, hi0 * b
            err = float((_q(v, lo, hi, levels) - v).square().mean())
            best = min(best, (err, lo, hi))
    return best[1], best[2]


def calibrate(student: SRStudent, calib: list[torch.Tensor], percentile: float, mse: bool = False) -> dict:
    """Return {point: (lo, hi)} over ``calib``: min/max (``percentile`` 100), the two-sided percentile, or with
    ``mse`` the range of least rounding error (:func:`mse_range`)."""
    probe = Probe(student, set(), None)
    for c in calib:
        probe(c)
    out = {}
    for name, parts in probe.seen.items():
        v = torch.cat(parts).float()
        if mse:
            sub = v[torch.randperm(len(v), generator=torch.Generator().manual_seed(0))[:300_000]]
            out[name] = mse_range(sub)
        elif percentile >= 100:
            out[name] = (float(v.min()), float(v.max()))
        else:
            q = torch.quantile(v[torch.randperm(len(v), generator=torch.Generator().manual_seed(0))[:2_000_000]],
                               torch.tensor([1 - percentile / 100, percentile / 100]))
            out[name] = (float(q[0]), float(q[1]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("stages", nargs="+", type=Path, help="stage_XX.pt files of distill runs (with generator.pt)")
    ap.add_argument("--percentile", type=float, default=99.99, help="activation ranges; 100 = min/max")
    ap.add_argument("--mse", action="store_true", help="activation ranges of least rounding error instead")
    ap.add_argument("--weight-max", type=int, default=127, help="127: int8 weights; 64: the ONNX 7-bit weights")
    ap.add_argument("--per-tensor", action="store_true", help="per-tensor weights instead of per channel")
    ap.add_argument("--equalize", action="store_true",
                    help="equalize the stream and hidden ranges first (sr_shrink.export.equalize)")
    ap.add_argument("--calib-samples", type=int, default=16)
    ap.add_argument("--eval-images", type=int, default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    deltas: dict[str, list[float]] = {}
    for path in args.stages:
        student, _ = load_student(path)
        run = RunDir.open(path.parent)
        calib = calib_inputs(calib_source(run, None), student.scale, args.calib_samples, None, 0)
        if args.equalize:
            student = equalize(student, calib)[0]
        ranges = calibrate(student, calib, args.percentile, args.mse)
        pairs = load_eval_set(student.scale, max_images=args.eval_images)
        fp32 = evaluate_fn(Probe(student, set(), ranges), pairs, student.scale)["psnr_y"]
        rows = {g: {g} for g in GROUPS}
        rows["all (TFLite-like)"] = set(GROUPS) - {"output clamped"}
        rows["all, output clamped"] = set(GROUPS) - {"output"}
        rows["body only (ONNX-like)"] = {"weights", "relu", "conv2", "add"}
        rows["body + head output (the ONNX file's points)"] = {"weights", "head", "relu", "conv2", "add"}
        for label, groups in rows.items():
            probe = Probe(student, groups, ranges, args.weight_max, args.per_tensor)
            d = evaluate_fn(probe, pairs, student.scale)["psnr_y"] - fp32
            deltas.setdefault(label, []).append(d)
        print(f"{path}: fp32 {fp32:.3f} dB; ranges " + ", ".join(f"{k} [{lo:.2f}, {hi:.2f}]"
                                                                  for k, (lo, hi) in ranges.items()), flush=True)
    ranges_name = ("least-MSE" if args.mse else "min/max" if args.percentile >= 100
                   else f"{args.percentile} percentile")
    print(f"\n| int8 at (weights {'per tensor' if args.per_tensor else 'per channel'} in [-{args.weight_max}, "
          f"{args.weight_max}], {'equalized, ' if args.equalize else ''}activation ranges "
          f"{ranges_name}) | mean delta Y-PSNR dB "
          f"({len(args.stages)} students) | min-max |")
    print("|---|---:|---|")
    for label, ds in deltas.items():
        print(f"| {label} | {statistics.mean(ds):+.3f} | {min(ds):+.3f} to {max(ds):+.3f} |")


if __name__ == "__main__":
    main()
