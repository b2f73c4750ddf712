"""Calibration inputs for int8 exports: LR patches from the run's data-free sources or from photos.

Source ``"generator"`` samples ``RUN_DIR/generator.pt`` (the inputs the student was distilled on);
``"synthetic"`` (opt-in) renders the synthetic sources run.json records (``--synthetic``; a teacher-grown kind by
the source it grows, since export loads no teacher) at the run's LR patch size: data-free inputs apart from the
images the export is verified on, for a run trained without a generator (``--mix 1``). A folder (the bundled eval
split for a run without generator.pt) gives LR crops: each photo is bicubic-downscaled by the scale, as the eval pairs
are, then cropped (96x96 for free-size graphs). Fixed-size exports get inputs of exactly that size (photo crops,
padded when a photo is smaller; generator or synthetic patches tiled into a mosaic), since their graphs only
accept that size. Free-size graphs get those patches as sampled, as many pixels as the photo crops.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import EVAL_DIR, list_images, make_lr, mod_crop, read_image
from ..distill.generator import load_generator
from ..distill.grown import KINDS, base_kinds
from ..distill.render import synthetic_mix
from ..errors import SRShrinkError
from ..progress import task
from ..run import RunDir
from .options import CALIB_CROP


@dataclass
class CalibSource:
    """Where calibration inputs come from: ``kind`` "generator" or "images", the path, and why."""

    kind: str
    path: Path
    note: str = ""
    kinds: tuple[str, ...] = ()  # "synthetic": the sources rendered (teacher-grown kinds by their base source)
    patch: int = 0  # "synthetic": the LR patch side they are rendered at

    def describe(self) -> dict:
        """Return the JSON record of this source for export.json."""
        d = {"source": self.kind, "path": str(self.path)}
        if self.path == EVAL_DIR:
            d["path"] = "bundled eval images (sr_shrink/assets/eval)"
        if self.kind == "synthetic":
            d.update(kinds=",".join(self.kinds), lr_patch=self.patch)
        if self.note:
            d["note"] = self.note
        return d


def recorded_sources(config: dict) -> list[str]:
    """Return the synthetic sources a run's recorded ``config`` names (``--synthetic``, as resolved), those
    sr-shrink knows, in order; [] when it names none."""
    return [k for k in str(config.get("synthetic") or "").split(",") if k in KINDS]


def run_synthetic(run: RunDir) -> CalibSource | None:
    """Return the ``"synthetic"`` source of ``run``'s data-free inputs as run.json records them (mode datafree
    with a synthetic share: its ``synthetic`` kinds at its ``lr_patch``), or None for any other run."""
    config = run.record.config or {}
    mix = config.get("mix")
    if config.get("mode") != "datafree" or not isinstance(mix, (int, float)) or mix <= 0:
        return None
    kinds = tuple(dict.fromkeys(base_kinds(recorded_sources(config))))
    patch = config.get("lr_patch")
    if not kinds or not isinstance(patch, int) or patch < 1:
        return None
    return CalibSource("synthetic", run.root, kinds=kinds, patch=patch)


def calib_source(run: RunDir, choice: str | Path | None) -> CalibSource:
    """Return the calibration source ``choice`` names ("generator", "synthetic" (:func:`run_synthetic`), a folder,
    or ``None`` for the default: generator.pt when the run has one, else the bundled eval images)."""
    if choice is None:
        if run.generator is not None:
            return CalibSource("generator", run.generator, "default: the run's generator.pt")
        if run.generator_path.is_file():  # set aside by without_unreadable_generator
            return CalibSource("images", EVAL_DIR, "default: the run's generator.pt cannot be read")
        return CalibSource("images", EVAL_DIR, "default: the run has no generator.pt")
    if str(choice) == "generator":
        if run.generator is None:
            raise SRShrinkError(f"{run.root}: --calib generator needs RUN_DIR/generator.pt, which this run lacks; "
                                "pass --calib DIR with a folder of photos instead.")
        return CalibSource("generator", run.generator)
    if str(choice) == "synthetic":
        synthetic = run_synthetic(run)
        if synthetic is None:
            raise SRShrinkError(f"{run.root}: --calib synthetic needs a datafree run whose run.json records its "
                                "synthetic sources (--synthetic, --lr-patch), which this run lacks; pass --calib DIR "
                                "with a folder of photos instead.")
        return synthetic
    folder = Path(choice)
    list_images(folder)  # a clear error for a missing or empty folder
    return CalibSource("images", folder)


def without_unreadable_generator(run: RunDir, choice: str | Path | None, calibrated: bool,
                                 qat: bool) -> tuple[RunDir, str | None]:
    """Return (``run``, None) when its generator.pt loads, is absent, or the export does not read it (``calibrated``:
    it calibrates on ``choice``; ``qat``: it fine-tunes on the run's data-free inputs). When the file is there but
    cannot be loaded: an SRShrinkError naming it and what to do for ``choice`` "generator" (--calib asked for it),
    else (a copy of ``run`` without it, so the export goes on as for a run without generator.pt: calibration on the
    bundled eval images, QAT on synthetic inputs alone; the one-line note that says so)."""
    calib_default = calibrated and choice is None
    asked = calibrated and str(choice) == "generator"
    if run.generator is None or not (calib_default or asked or qat):
        return run, None
    try:
        load_generator(run.generator)
        return run, None
    except SRShrinkError as exc:
        problem = str(exc).rstrip(".")
    if asked:
        raise SRShrinkError(f"{problem}; pass --calib DIR with a folder of photos, or leave --calib out to calibrate "
                            "on the bundled eval images.")
    instead = [*(["calibrates on the bundled eval images"] if calib_default else []),
               *(["fine-tunes (--qat) on synthetic inputs alone"] if qat else [])]
    return replace(run, generator=None), (f"note: {problem}; this export {' and '.join(instead)} instead, as for a "
                                          "run without generator.pt.")


_MEMO: dict[tuple, list[torch.Tensor]] = {}
_MEMO_MAX = 4  # a handful of (source, size) combinations: ~14 MB each at the default pixel count


def calib_inputs(src: CalibSource, scale: int, n: int, size: tuple[int, int] | None, seed: int) -> list[torch.Tensor]:
    """Return LR calibration inputs (1, 3, h, w) in [0, 1] from ``src``: ``n`` of them of ``size`` when it is
    given; else ``n`` 96x96 photo crops, or generator patches holding as many pixels.

    The same request (same files, unchanged on disk, same scale, count, size and seed) returns the inputs
    made the first time in this process: ``sr-shrink bench`` exports stage after stage, and sampling the
    generator costs ~13 s per export on one core. Callers must not modify the tensors."""
    origin = (src.kinds, src.patch) if src.kind == "synthetic" else _fingerprint(src.path)
    key = (src.kind, origin, scale, n, tuple(size) if size else None, seed)
    if key not in _MEMO:
        gen = torch.Generator().manual_seed(seed)
        what = {"generator": "generator.pt", "synthetic": "synthetic images"}.get(src.kind, "photos")
        with task(f"calibration inputs from {what}", total=n) as advance:
            if src.kind == "generator":
                inputs = _generator_inputs(src.path, n, size, gen, advance)
            elif src.kind == "synthetic":
                def sample(count, g):
                    return synthetic_mix(list(src.kinds), count, src.patch, g)
                inputs = _patch_inputs(sample, src.patch, n, size, gen, advance)
            else:
                inputs = _image_inputs(src.path, scale, n, size, gen, advance)
        while len(_MEMO) >= _MEMO_MAX:
            _MEMO.pop(next(iter(_MEMO)))
        _MEMO[key] = inputs
    return list(_MEMO[key])


def calib_batches(calib: list[torch.Tensor], size: int = 64) -> list[torch.Tensor]:
    """Return ``calib`` concatenated into batches of up to ``size`` inputs of the same shape."""
    by_shape: dict[tuple, list[torch.Tensor]] = {}
    for x in calib:
        by_shape.setdefault(tuple(x.shape[1:]), []).append(x)
    return [torch.cat(xs[i:i + size]) for xs in by_shape.values() for i in range(0, len(xs), size)]


@torch.no_grad()
def visit_convs(net: torch.nn.Module, convs: list[torch.nn.Conv2d], batches: list[torch.Tensor],
                fn: Callable[[torch.nn.Conv2d, list[torch.Tensor]], None], per_conv: bool = False) -> None:
    """Call ``fn(conv, inputs)`` for each of ``convs`` (modules of ``net``, in network order; returns nothing):
    ``inputs`` are the batches the conv sees when ``net`` runs on ``batches`` with whatever ``fn`` changed in the
    convs before it. With one batch a single forward pass does it, each conv visited as the pass reaches it; with
    several (or ``per_conv``) ``net`` runs over every batch once per conv. The inputs are the same either way."""
    if len(batches) == 1 and not per_conv:
        done: set[torch.nn.Module] = set()

        def visit(conv, args):
            if conv not in done:  # a conv the forward calls twice is visited once, as below
                done.add(conv)
                fn(conv, [args[0]])

        handles = [conv.register_forward_pre_hook(visit) for conv in convs]
        try:
            net(batches[0])
        finally:
            for h in handles:
                h.remove()
        return
    for conv in convs:
        seen: list[torch.Tensor] = []
        hook = conv.register_forward_pre_hook(lambda mod, args, seen=seen: seen.append(args[0]))
        try:
            for x in batches:
                net(x)
        finally:
            hook.remove()
        fn(conv, seen)


def _fingerprint(path: Path) -> tuple:
    """Return what identifies the content at ``path``: a file's SHA-256, or each image's name, size and mtime."""
    path = Path(path)
    if path.is_file():
        return (str(path.resolve()), hashlib.sha256(path.read_bytes()).hexdigest())
    return tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in list_images(path))


def _generator_inputs(path: Path, n: int, size: tuple[int, int] | None, gen: torch.Generator,
                      advance=lambda n=1: None) -> list[torch.Tensor]:
    g = load_generator(path)
    if getattr(g, "any_size", False):  # a fully convolutional generator samples at the wanted size directly
        h, w = size or (CALIB_CROP, CALIB_CROP)
        return [_done(g.sample(1, generator=gen, size=max(h, w))[..., :h, :w].contiguous(), advance)
                for _ in range(n)]
    p = int(g.sample(1, generator=torch.Generator().manual_seed(0)).shape[-1])
    return _patch_inputs(lambda count, gen: _sample(g, count, gen), p, n, size, gen, advance)


def _patch_inputs(sample: Callable[[int, torch.Generator], torch.Tensor], p: int, n: int,
                  size: tuple[int, int] | None, gen: torch.Generator, advance=lambda n=1: None) -> list[torch.Tensor]:
    """Return calibration inputs made of square ``p``-px patches that ``sample(count, gen)`` draws: for free-size
    graphs the patches as they are (as many pixels as ``n`` photo crops), else ``n`` mosaics of ``size``."""
    if size is None:
        count = math.ceil(n * CALIB_CROP * CALIB_CROP / (p * p))
        inputs = [x.unsqueeze(0) for x in sample(count, gen)]
        advance(n)
        return inputs
    tiles = math.ceil(size[0] / p) * math.ceil(size[1] / p)
    return [_done(mosaic(sample(tiles, gen), size), advance) for _ in range(n)]


def _done(x: torch.Tensor, advance) -> torch.Tensor:
    """Return ``x`` after reporting one more input made."""
    advance()
    return x


def _sample(g, count: int, gen: torch.Generator, chunk: int = 256) -> torch.Tensor:
    parts = [g.sample(min(chunk, count - i), generator=gen) for i in range(0, count, chunk)]
    return torch.cat(parts).float().clamp(0, 1)


def mosaic(patches: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Return (1, 3, h, w): the square ``patches`` (k, 3, p, p) laid out row by row, cropped to ``size``."""
    h, w = size
    p = patches.shape[-1]
    rows, cols = math.ceil(h / p), math.ceil(w / p)
    if patches.shape[0] < rows * cols:
        raise ValueError(f"mosaic of {size} needs {rows * cols} patches, got {patches.shape[0]}")
    grid = patches[: rows * cols].reshape(rows, cols, 3, p, p).permute(2, 0, 3, 1, 4)
    return grid.reshape(1, 3, rows * p, cols * p)[..., :h, :w].contiguous()


def _image_inputs(folder: Path, scale: int, n: int, size: tuple[int, int] | None,
                  gen: torch.Generator, advance=lambda n=1: None) -> list[torch.Tensor]:
    lrs = [make_lr(mod_crop(read_image(f), scale), scale) for f in list_images(folder)]
    crop = size or (CALIB_CROP, CALIB_CROP)
    inputs = [random_crop(lrs[i % len(lrs)], crop, gen).unsqueeze(0) for i in range(n)]
    advance(n)
    return inputs


def random_crop(img: torch.Tensor, size: tuple[int, int], gen: torch.Generator) -> torch.Tensor:
    """Return a random (3, h, w) crop of ``img``, replicate-padded first where ``img`` is smaller."""
    h, w = size
    ih, iw = img.shape[-2:]
    if ih < h or iw < w:
        img = F.pad(img.unsqueeze(0), (0, max(0, w - iw), 0, max(0, h - ih)), mode="replicate")[0]
        ih, iw = img.shape[-2:]
    y = int(torch.randint(ih - h + 1, (1,), generator=gen))
    x = int(torch.randint(iw - w + 1, (1,), generator=gen))
    return img[:, y:y + h, x:x + w]
