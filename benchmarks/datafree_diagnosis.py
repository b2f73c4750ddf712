"""What a data-free student misses that a photo-trained one learns: its error against the teacher, split by image,
frequency band, structure type and colour (issue 13).

Both groups of runs are scored against the teacher's 8-bit output on the eval split (fidelity), so the split shows
where each student departs from what it was taught. Per group the errors are pooled over its runs (seeds).

* bands: radial bands of the HR error spectrum, in units of the HR Nyquist frequency; above 1/scale lie the
  frequencies the LR input does not carry (what the network must synthesise);
* structure: pixels of the teacher's Y output classed by the local gradient (RMS of Sobel over a 5x5 window, Y
  in [16, 235]) and the structure tensor's coherence: flat (RMS < 2), edges (coherence >= 0.5), textures (the rest);
* colour: the Cb and Cr PSNR against the teacher's output.

    python benchmarks/datafree_diagnosis.py --teacher sr_shrink/assets/teacher_x2.pt \
        --a runs/long_x2/datafree_1500_s* --b runs/long_x2/data_1500_s* --labels datafree data
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import load_eval_set  # noqa: E402
from sr_shrink.evaluate import model_outputs  # noqa: E402
from sr_shrink.metrics import rgb_to_y  # noqa: E402
from sr_shrink.models.student import load_student  # noqa: E402
from sr_shrink.teachers.load import load_teacher  # noqa: E402

BANDS = [(0.0, 0.125), (0.125, 0.25), (0.25, 0.5), (0.5, 0.75), (0.75, 1.5)]
CLASSES = ("flat", "textures", "edges")


def _ycbcr(img: torch.Tensor) -> torch.Tensor:
    """BT.601 Y, Cb, Cr (Y in [16, 235], chroma in [16, 240]) of an RGB (3, H, W) image in [0, 1]."""
    r, g, b = img.double()
    y = rgb_to_y(img.double().unsqueeze(0))[0, 0]
    cb = 128.0 - 37.797 * r - 74.203 * g + 112.0 * b
    cr = 128.0 + 112.0 * r - 93.786 * g - 18.214 * b
    return torch.stack([y, cb, cr])


def structure_classes(y: torch.Tensor) -> torch.Tensor:
    """Return a (H, W) long map of ``CLASSES`` indices for a Y image (H, W) in [16, 235]."""
    kx = torch.tensor([[-1.0, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=torch.float64) / 8
    img = y.view(1, 1, *y.shape)
    pad = F.pad(img, (1, 1, 1, 1), mode="replicate")
    gx = F.conv2d(pad, kx.view(1, 1, 3, 3))
    gy = F.conv2d(pad, kx.t().contiguous().view(1, 1, 3, 3))
    box = torch.ones(1, 1, 5, 5, dtype=torch.float64) / 25

    def smooth(t):
        return F.conv2d(F.pad(t, (2, 2, 2, 2), mode="replicate"), box)

    jxx, jyy, jxy = smooth(gx * gx), smooth(gy * gy), smooth(gx * gy)
    rms = (jxx + jyy).sqrt()
    coherence = ((jxx - jyy) ** 2 + 4 * jxy**2).sqrt() / (jxx + jyy).clamp_min(1e-9)
    cls = torch.where(rms < 2.0, 0, torch.where(coherence >= 0.5, 2, 1))
    return cls[0, 0].long()


def band_energy(err: torch.Tensor) -> list[float]:
    """Return the error's mean squared value carried by each of ``BANDS`` (Parseval; they sum to the MSE)."""
    h, w = err.shape
    spec = torch.fft.fft2(err).abs() ** 2 / (h * w) ** 2
    fy = torch.fft.fftfreq(h, dtype=torch.float64).view(-1, 1) * 2  # 1.0 = Nyquist
    fx = torch.fft.fftfreq(w, dtype=torch.float64).view(1, -1) * 2
    r = (fx**2 + fy**2).sqrt()
    return [float(spec[(r >= lo) & (r < hi)].sum()) for lo, hi in BANDS]


def _db(mse: float) -> float:
    return float("inf") if mse <= 0 else 10 * math.log10(255.0**2 / mse)


def diagnose(outputs: list[dict], teacher_out: dict, scale: int) -> dict:
    """Return the error split (per image, band, structure class, colour) of a group of students' outputs
    against the teacher's, pooled over the group; values are PSNR-like dB (higher = closer to the teacher)."""
    per_image, bands, cls_sse, cls_n, chroma = {}, [0.0] * len(BANDS), [0.0] * 3, [0] * 3, [0.0, 0.0]
    n_img = 0
    for out in outputs:
        for name, t in teacher_out.items():
            c = scale
            ref, img = _ycbcr(t)[:, c:-c, c:-c], _ycbcr(out[name])[:, c:-c, c:-c]
            err = img - ref
            mse = float((err[0] ** 2).mean())
            per_image.setdefault(name, []).append(mse)
            for i, e in enumerate(band_energy(err[0])):
                bands[i] += e
            cls = structure_classes(ref[0])
            for k in range(3):
                m = cls == k
                cls_sse[k] += float((err[0][m] ** 2).sum())
                cls_n[k] += int(m.sum())
            chroma[0] += float((err[1] ** 2).mean())
            chroma[1] += float((err[2] ** 2).mean())
            n_img += 1
    return {
        "per_image": {k: _db(sum(v) / len(v)) for k, v in per_image.items()},
        "bands": {f"{lo:g}-{hi:g}": _db(e / n_img) for (lo, hi), e in zip(BANDS, bands)},
        "structure": {c: _db(s / max(n, 1)) for c, s, n in zip(CLASSES, cls_sse, cls_n)},
        "structure_share": {c: n / max(sum(cls_n), 1) for c, n in zip(CLASSES, cls_n)},
        "colour": {"cb": _db(chroma[0] / n_img), "cr": _db(chroma[1] / n_img)},
    }


def _final_stage(run: Path) -> Path:
    ckpts = sorted(run.glob("stage_*.pt"))
    if not ckpts:
        sys.exit(f"error: {run} has no stage_XX.pt; pass finished distill runs")
    return ckpts[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--teacher", default=None)
    ap.add_argument("--a", nargs="+", type=Path, required=True, help="run folders of the first group")
    ap.add_argument("--b", nargs="+", type=Path, required=True, help="run folders of the second group")
    ap.add_argument("--labels", nargs=2, default=["a", "b"])
    ap.add_argument("--eval-images", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    teacher = load_teacher(args.teacher)
    scale = teacher.scale
    pairs = load_eval_set(scale, max_images=args.eval_images)
    teacher_out = model_outputs(teacher, pairs)
    groups = {}
    for label, runs in zip(args.labels, (args.a, args.b)):
        outs = []
        for run in runs:
            student, _ = load_student(_final_stage(run))
            outs.append(model_outputs(student, pairs))
        groups[label] = diagnose(outs, teacher_out, scale)
    la, lb = args.labels
    ga, gb = groups[la], groups[lb]
    lines = [f"| x{scale}, dB against the teacher's output | {la} ({len(args.a)} runs) | {lb} ({len(args.b)} runs) "
             f"| {la} - {lb} |", "|---|---:|---:|---:|"]

    def row(label, a, b):
        lines.append(f"| {label} | {a:.2f} | {b:.2f} | {a - b:+.2f} |")

    for k in ga["bands"]:
        row(f"band {k} x Nyquist" + (" (not in the input)" if float(k.split("-")[0]) >= 1 / scale else ""),
            ga["bands"][k], gb["bands"][k])
    for k in CLASSES:
        row(f"{k} ({100 * ga['structure_share'][k]:.0f} % of pixels)", ga["structure"][k], gb["structure"][k])
    for k in ("cb", "cr"):
        row(f"colour {k.upper()}", ga["colour"][k], gb["colour"][k])
    for k in ga["per_image"]:
        row(f"image {k}", ga["per_image"][k], gb["per_image"][k])
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(groups, indent=2))


if __name__ == "__main__":
    main()
