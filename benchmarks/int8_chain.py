"""Does a student without a residual stream lose less in int8? A QuickSRNet-like plain conv chain against the
sr-shrink student at the same MACs (issue 20 item 4).

Both students have 16 channels, a 3x3 head, eight 3x3 body convs and a 3x3 tail, plus the anchor (the input
repeated s^2 times) before the pixel shuffle, so their MACs are equal:

* ``res``: :class:`~sr_shrink.models.student.SRStudent` with 4 residual blocks (conv-ReLU-conv + skip), rep form;
* ``chain``: head-ReLU, eight conv-ReLU (each a :class:`~sr_shrink.models.student.RepConv`), tail: every
  activation is a post-ReLU tensor and nothing is summed before the anchor (QuickSRNet's layout).

Each is trained the same way from scratch (no growth: one stage), by KD on the teacher's output on dead-leaves
patches (batch 16, 24 px LR at x2, 12 px at x4, Adam 1e-3 with cosine decay, L1), then exported to ONNX in
fp32 and int8 with the export's own quantizer (``export.onnx.to_int8``, the default scheme and ``--no-reduce-range``),
calibrated on the same 128 dead-leaves images for both. Scores: Y-PSNR on the bundled eval split of the fp32
file and the int8 file's delta against it (8-bit outputs).

    OMP_NUM_THREADS=1 python benchmarks/int8_chain.py --arch chain --steps 3000     # and --arch res
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.distill.render import synthetic_mix  # noqa: E402
from sr_shrink.export.onnx import INT8_SCHEME, to_int8  # noqa: E402
from sr_shrink.export.wrapper import MobileSR, anchor_conv  # noqa: E402
from sr_shrink.metrics import psnr_y  # noqa: E402
from sr_shrink.models.student import RepConv, SRStudent, collapse  # noqa: E402
from sr_shrink.teachers import load_teacher  # noqa: E402


class Chain(nn.Module):
    """head-ReLU, ``n_convs`` RepConv-ReLU, tail, + the anchor, pixel shuffle (training form)."""

    def __init__(self, scale: int, n_convs: int = 8, channels: int = 16):
        super().__init__()
        self.scale = scale
        self.head = nn.Conv2d(3, channels, 3, padding=1)
        self.body = nn.ModuleList([RepConv(channels) for _ in range(n_convs)])
        self.tail = nn.Conv2d(channels, 3 * scale * scale, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def features(self, x: torch.Tensor, convs) -> torch.Tensor:
        """Return the tail's input: the chain of ReLU(conv) from ``head`` through ``convs``."""
        f = F.relu(self.head(x))
        for conv in convs:
            f = F.relu(conv(f))
        return f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.tail(self.features(x, self.body)) + x.repeat_interleave(self.scale ** 2, dim=1)
        return F.pixel_shuffle(out, self.scale)


class ChainExport(nn.Module):
    """The chain with each RepConv folded to one 3x3 conv, a conv anchor and the output clamp (as MobileSR)."""

    def __init__(self, chain: Chain):
        super().__init__()
        self.chain, self.anchor = chain, anchor_conv(chain.scale)
        self.convs = nn.ModuleList()
        for rep in chain.body:
            w, b = rep.kernel()
            conv = nn.Conv2d(w.shape[1], w.shape[0], 3, padding=1)
            conv.weight.data, conv.bias.data = w.detach().clone(), b.detach().clone()
            self.convs.append(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.chain.tail(self.chain.features(x, self.convs)) + self.anchor(x)
        return F.pixel_shuffle(y.clamp(0, 1), self.chain.scale)


def train(model: nn.Module, teacher, steps: int, patch: int, seed: int) -> None:
    """KD on dead leaves, in place."""
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = synthetic_mix(["deadleaves"], 16, patch, g)
        with torch.no_grad():
            y = teacher(x).clamp(0, 1)
        loss = (model(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def score(path: Path, pairs, scale: int) -> float:
    """Return the mean Y-PSNR of the ONNX file at ``path`` on ``pairs``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    vals = [psnr_y(torch.from_numpy(sess.run(None, {"lr": p.lr[None].numpy().astype(np.float32)})[0])[0], p.hr,
                   crop_border=scale) for p in pairs]
    return float(np.mean(vals))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=("chain", "res"), required=True)
    ap.add_argument("--teacher", default=None, help="default: the bundled teacher of --scale")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import onnx

    torch.manual_seed(args.seed)
    teacher = load_teacher(args.teacher, scale=args.scale).eval()
    scale = teacher.scale
    model = Chain(scale) if args.arch == "chain" else SRStudent(scale, 4, 16, "rep")
    t0 = time.time()
    train(model, teacher, args.steps, 24 if scale == 2 else 12, args.seed)
    model.eval()
    exp = ChainExport(model) if args.arch == "chain" else MobileSR(collapse(model))
    pairs = load_eval_set(scale)
    calib = [c[None] for c in synthetic_mix(["deadleaves"], 128, 48, torch.Generator().manual_seed(1))]
    row = {"arch": args.arch, "scale": scale, "steps": args.steps, "seed": args.seed}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        torch.onnx.export(exp.eval(), torch.rand(1, 3, 64, 64), str(fp32), input_names=["lr"], output_names=["sr"],
                          dynamic_axes={"lr": {2: "h", 3: "w"}, "sr": {2: "H", 3: "W"}}, opset_version=17,
                          dynamo=False)
        row["fp32_psnr_y"] = round(score(fp32, pairs, scale), 4)
        proto = onnx.load(str(fp32))
        for name, scheme in (("int8", INT8_SCHEME), ("int8_no_reduce_range", INT8_SCHEME.with_options(False))):
            q, _ = to_int8(proto, calib, False, scheme)
            path = Path(tmp) / f"{name}.onnx"
            onnx.save(q, str(path))
            row[f"delta_{name}"] = round(score(path, pairs, scale) - row["fp32_psnr_y"], 4)
    row["seconds"] = round(time.time() - t0)
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
