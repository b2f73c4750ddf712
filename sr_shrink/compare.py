"""Side-by-side crops for ``sr-shrink upscale --compare``: bicubic | student | teacher, on the most detailed
window of the image. The teacher runs only on that window (plus a margin), so it stays cheap on big images.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .errors import SRShrinkError
from .resize import upscale as bicubic
from .run import RunDir

SRFn = Callable[[torch.Tensor], torch.Tensor]
MARGIN = 24  # LR pixels of context around the crop for bicubic and the teacher


def reference_teacher(up, teacher: str | Path | None, device: str = "cpu",
                      log: Callable[[str], None] | None = None, value_range: float | None = None,
                      res_scale: float | None = None) -> SRFn | None:
    """Return the teacher for the third panel: ``teacher``, else the model's run's (with the value range run.json
    records), else the bundled default when its scale matches; None (with a log line) when there is none.
    ``value_range`` / ``res_scale`` override what is inferred from the teacher file."""
    from .teachers import load_teacher

    log = log or (lambda _m: None)
    if teacher is not None:
        net = load_teacher(teacher, scale=up.scale, device=device, value_range=value_range, res_scale=res_scale)
    else:
        run = RunDir.find(up.path)
        run_teacher = run.teacher_path() if run else None
        path = run_teacher or _bundled(up.scale)
        if path is None:
            log("no teacher found (pass --teacher); the comparison shows bicubic | student only.")
            return None
        if run_teacher is not None:  # reload the run's teacher as it was distilled
            saved = run.teacher_overrides()
            value_range = value_range if value_range is not None else saved["value_range"]
            res_scale = res_scale if res_scale is not None else saved["res_scale"]
        try:
            net = load_teacher(path, scale=up.scale, device=device, value_range=value_range, res_scale=res_scale)
        except SRShrinkError as exc:
            log(f"teacher {path} not usable here ({exc}); comparison without it.")
            return None

    @torch.inference_mode()
    def fn(x: torch.Tensor) -> torch.Tensor:
        return net(x.to(device)).float().cpu()

    return fn


def detail_window(lr: torch.Tensor, size: int) -> tuple[int, int]:
    """Return the top-left (y, x) of the ``size`` x ``size`` window of ``lr`` (3,h,w) with the most edges."""
    h, w = lr.shape[-2:]
    if h <= size and w <= size:
        return 0, 0
    grey = lr.mean(dim=0, keepdim=True).unsqueeze(0)
    edges = (grey[..., 1:, :-1] - grey[..., :-1, :-1]).abs() + (grey[..., :-1, 1:] - grey[..., :-1, :-1]).abs()
    k = (min(size, h - 1), min(size, w - 1))
    energy = F.avg_pool2d(edges, k, stride=1)[0, 0]
    idx = int(torch.argmax(energy))
    return idx // energy.shape[1], idx % energy.shape[1]


def _panel(img: torch.Tensor, label: str) -> Image.Image:
    """Return a PIL panel of ``img`` (3,H,W) with ``label`` written on a strip above it."""
    arr = img.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    body = Image.fromarray(arr)
    panel = Image.new("RGB", (body.width, body.height + 16), "white")
    panel.paste(body, (0, 16))
    ImageDraw.Draw(panel).text((3, 2), label, fill="black")
    return panel


def compare_strip(lr: torch.Tensor, sr: torch.Tensor, scale: int, teacher: SRFn | None = None,
                  crop: int = 192) -> Image.Image:
    """Return one image: bicubic | student | teacher crops (``crop`` output pixels, fewer on small images)."""
    size = max(1, crop // scale)
    y, x = detail_window(lr, size)
    h, w = min(size, lr.shape[1] - y), min(size, lr.shape[2] - x)
    y0, x0 = max(0, y - MARGIN), max(0, x - MARGIN)
    ctx = lr[:, y0 : y + h + MARGIN, x0 : x + w + MARGIN].unsqueeze(0)
    oy, ox = (y - y0) * scale, (x - x0) * scale

    def cut(img: torch.Tensor) -> torch.Tensor:
        return img[0, :, oy : oy + h * scale, ox : ox + w * scale]

    panels = [_panel(cut(bicubic(ctx, scale)), "bicubic"),
              _panel(sr[:, y * scale : (y + h) * scale, x * scale : (x + w) * scale], "student")]
    if teacher is not None:
        panels.append(_panel(cut(teacher(ctx)), "teacher"))
    strip = Image.new("RGB", (sum(p.width for p in panels) + 4 * (len(panels) - 1), panels[0].height), "white")
    for i, p in enumerate(panels):
        strip.paste(p, (i * (p.width + 4), 0))
    return strip


def _bundled(scale: int) -> Path | None:
    """Return the bundled teacher for ``scale``, or None when sr-shrink ships none."""
    from .teachers import default_teacher

    try:
        return default_teacher(scale)
    except SRShrinkError:
        return None
