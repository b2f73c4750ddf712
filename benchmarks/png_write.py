"""How long ``sr-shrink upscale`` spends writing its PNG results, per zlib compression level.

An upscaled photo is large (x4 of a 2000x1500 photo is 48 MP) and PNG encoding is single-threaded. This writes
photo-like results (the bundled eval photos tiled to the size, then bicubic-upscaled, so they have a real photo's
detail rather than noise) at Pillow's default level 6 and at lower ones, and reports the median seconds and the
file sizes, as ratios to level 6 in one run. OpenCV's default PNG level, which Real-ESRGAN's and chaiNNer's
writers use, is 1.

    python benchmarks/png_write.py --sizes 3840x2160 8000x6000 --levels 6 3 1
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from sr_shrink.data import read_image  # noqa: E402
from sr_shrink.resize import upscale  # noqa: E402


def photo(h: int, w: int, scale: int = 4) -> Image.Image:
    """Return an (h, w) RGB image: the eval photos tiled to (h/scale, w/scale), bicubic-upscaled by ``scale``."""
    photos = [read_image(p) for p in sorted((REPO / "sr_shrink/assets/eval").glob("*.png"))]
    lh, lw = -(-h // scale), -(-w // scale)
    row_h = min(p.shape[1] for p in photos)
    rows, i = [], 0
    while sum(r.shape[1] for r in rows) < lh:
        row, width = [], 0
        while width < lw:
            p = photos[i % len(photos)][:, :row_h]
            row.append(p)
            width += p.shape[2]
            i += 1
        rows.append(torch.cat(row, 2)[:, :, :lw])
    lr = torch.cat(rows, 1)[:, :lh]
    hr = upscale(lr.unsqueeze(0), scale)[0][:, :h, :w]
    return Image.fromarray(hr.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["3840x2160", "8000x6000"])
    ap.add_argument("--levels", nargs="+", type=int, default=[6, 3, 1])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    print("| output size | zlib level | seconds (median) | vs level 6 | MB | vs level 6 |")
    print("|---|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        w, h = (int(v) for v in size.split("x"))
        img = photo(h, w)
        base: tuple[float, int] | None = None
        for level in args.levels:
            times, nbytes = [], 0
            for _ in range(args.repeats):
                buf = io.BytesIO()
                t0 = time.perf_counter()
                img.save(buf, format="PNG", compress_level=level)
                times.append(time.perf_counter() - t0)
                nbytes = buf.tell()
            t = statistics.median(times)
            base = base or (t, nbytes)
            print(f"| {w}x{h} | {level} | {t:.2f} | {t / base[0]:.2f}x | {nbytes / 1e6:.1f} | "
                  f"{nbytes / base[1]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
