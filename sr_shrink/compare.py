"""Side-by-side crops for ``sr-shrink upscale --compare``: bicubic | student | teacher, one row per window.

The windows are where the teacher's output differs most from bicubic, i.e. where super-resolution shows (not
flat or dark areas where all three look alike). The teacher runs only on a few candidate windows (plus a
margin), so it stays cheap on big images: the candidates are the windows where the student differs most from
bicubic (the student imitates the teacher), taken without overlap; the teacher then ranks them. Panels are
:data:`PANEL` output pixels wide and high (smaller only when the image is).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from .errors import SRShrinkError
from .progress import task
from .resize import upscale as bicubic
from .run import RunDir

SRFn = Callable[[torch.Tensor], torch.Tensor]
MARGIN = 24  # LR pixels of context around the crop for bicubic and the teacher
PANEL = 256  # output pixels per panel side
CANDIDATES = 3  # candidate windows per wanted crop that the teacher ranks


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
        if run_teacher is None:  # not necessarily the teacher this model learnt from: say so
            why = (f"{up.path.name} is not in a run folder (nor listed by an export.json beside it)" if run is None
                   else f"the teacher its run.json names ({(run.record.teacher or {}).get('path', '?')}) is not there")
            log(f"note: {why}, so the teacher panel shows sr-shrink's bundled x{up.scale} teacher; pass --teacher "
                "for the one it was distilled from.")
        try:  # the run's teacher reloads as it was distilled (run.json's value range and res_scale)
            net = (run.load_teacher(up.scale, device, value_range=value_range, res_scale=res_scale).net
                   if run_teacher is not None else
                   load_teacher(path, scale=up.scale, device=device, value_range=value_range, res_scale=res_scale))
        except SRShrinkError as exc:
            log(f"teacher {path} not usable here ({exc}); comparison without it.")
            return None

    @torch.inference_mode()
    def fn(x: torch.Tensor) -> torch.Tensor:
        return net(x.to(device)).float().cpu()

    return fn


def box_means(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Return the mean of ``m`` (H, W) over every h x w window, indexed by its top-left corner, (H-h+1, W-w+1);
    from an integral image, so the cost does not grow with the window."""
    s = F.pad(m.double().cumsum(0).cumsum(1), (1, 0, 1, 0))
    return (s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]) / (h * w)


def top_windows(score: torch.Tensor, h: int, w: int, n: int) -> list[tuple[int, int]]:
    """Return the top-left (y, x) of up to ``n`` non-overlapping h x w windows of ``score`` (H, W), highest
    window mean first."""
    means = box_means(score, min(h, score.shape[0]), min(w, score.shape[1]))
    picked = []
    for _ in range(n):
        idx = int(torch.argmax(means))
        y, x = idx // means.shape[1], idx % means.shape[1]
        if picked and means[y, x] == -math.inf:
            break
        picked.append((y, x))
        means[max(0, y - h + 1): y + h, max(0, x - w + 1): x + w] = -math.inf  # no overlap with this one
    return picked


def _lr_difference(lr: torch.Tensor, sr: torch.Tensor, scale: int, band: int = 256) -> torch.Tensor:
    """Return |sr - bicubic(lr)| averaged over channels and each scale x scale block, (h, w): computed in
    bands of LR rows, so memory stays bounded on big images (a progress phase on images of several bands)."""
    h = lr.shape[-2]
    rows = []
    starts = range(0, h, band)
    with task("finding where the student differs most from bicubic", total=len(starts),
              unit="bands of rows") if len(starts) > 1 else nullcontext(lambda: None) as advance:
        for y in starts:
            y0, y1 = max(0, y - 4), min(h, y + band + 4)
            up = bicubic(lr[:, y0:y1].unsqueeze(0), scale)[0, :, (y - y0) * scale:(min(h, y + band) - y0) * scale]
            diff = (sr[:, y * scale:min(h, y + band) * scale] - up).abs().mean(dim=0, keepdim=True)
            rows.append(F.avg_pool2d(diff.unsqueeze(0), scale)[0, 0])
            advance()
    return torch.cat(rows)


def _context(lr: torch.Tensor, y: int, x: int, h: int, w: int) -> tuple[torch.Tensor, int, int]:
    """Return (the LR window with MARGIN pixels of context, (1,3,.,.), and the window's offset inside it)."""
    y0, x0 = max(0, y - MARGIN), max(0, x - MARGIN)
    return lr[:, y0: y + h + MARGIN, x0: x + w + MARGIN].unsqueeze(0), y - y0, x - x0


def choose_windows(lr: torch.Tensor, sr: torch.Tensor, scale: int, teacher: SRFn | None, crops: int,
                   size: int) -> list[tuple[int, int, torch.Tensor | None]]:
    """Return up to ``crops`` windows (y, x, teacher output of the window or None) of ``size`` LR pixels: the
    CANDIDATES x crops windows where the student differs most from bicubic, ranked by how much the teacher
    differs from bicubic on them (by the student's difference when there is no teacher)."""
    h, w = min(size, lr.shape[1]), min(size, lr.shape[2])
    cands = top_windows(_lr_difference(lr, sr, scale), h, w, crops * (CANDIDATES if teacher else 1))
    if teacher is None:
        return [(y, x, None) for y, x in cands]
    ranked = []
    unit = "candidate window" + "s" * (len(cands) != 1)
    with task("running the teacher for the comparison", total=len(cands), unit=unit) as advance:
        for y, x in cands:
            ctx, oy, ox = _context(lr, y, x, h, w)
            cut = (slice(oy * scale, (oy + h) * scale), slice(ox * scale, (ox + w) * scale))
            t = teacher(ctx)[0][:, cut[0], cut[1]]
            b = bicubic(ctx, scale)[0][:, cut[0], cut[1]]
            ranked.append((float((t - b).abs().mean()), y, x, t))
            advance()
    ranked.sort(key=lambda r: -r[0])
    return [(y, x, t) for _, y, x, t in ranked[:crops]]


def _panel(img: torch.Tensor, label: str) -> Image.Image:
    """Return a PIL panel of ``img`` (3,H,W) with ``label`` written on a strip above it."""
    arr = img.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    body = Image.fromarray(arr)
    panel = Image.new("RGB", (body.width, body.height + 16), "white")
    panel.paste(body, (0, 16))
    ImageDraw.Draw(panel).text((3, 2), label, fill="black")
    return panel


def compare_strip(lr: torch.Tensor, sr: torch.Tensor, scale: int, teacher: SRFn | None = None,
                  crops: int = 1, panel: int = PANEL) -> Image.Image:
    """Return one image with a row per window (see :func:`choose_windows`): bicubic | student | teacher
    panels of ``panel`` output pixels (fewer on small images), the window's position in the label."""
    size = max(1, math.ceil(panel / scale))
    rows = []
    for y, x, t in choose_windows(lr, sr, scale, teacher, crops, size):
        h, w = min(size, lr.shape[1] - y), min(size, lr.shape[2] - x)
        ctx, oy, ox = _context(lr, y, x, h, w)
        where = f" ({x * scale},{y * scale})"
        b = bicubic(ctx, scale)[0, :, oy * scale:(oy + h) * scale, ox * scale:(ox + w) * scale]
        panels = [_panel(b, "bicubic" + where),
                  _panel(sr[:, y * scale: (y + h) * scale, x * scale: (x + w) * scale], "student")]
        if t is not None:
            panels.append(_panel(t, "teacher"))
        rows.append(panels)
    width = max(sum(p.width for p in r) + 4 * (len(r) - 1) for r in rows)
    strip = Image.new("RGB", (width, sum(r[0].height for r in rows) + 4 * (len(rows) - 1)), "white")
    top = 0
    for r in rows:
        for i, p in enumerate(r):
            strip.paste(p, (i * (p.width + 4), top))
        top += r[0].height + 4
    return strip


def _bundled(scale: int) -> Path | None:
    """Return the bundled teacher for ``scale``, or None when sr-shrink ships none."""
    from .teachers import default_teacher

    try:
        return default_teacher(scale)
    except SRShrinkError:
        return None
