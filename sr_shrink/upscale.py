"""``sr-shrink upscale``: run a student checkpoint or an exported .onnx/.tflite/.mlpackage on real images, tiled.

Every model runs through its runner from :mod:`sr_shrink.runtimes` (the same ones export verification and
bench use), which handles the file's layout, fp16/int8 I/O and fixed input size.

Images are turned upright by their EXIF orientation first (a phone photo's; the PNG result has none), and the
result carries the input's ICC colour profile when it is an RGB or grey one (an iPhone's Display P3). RGB as
is; grey (L, 16-bit, float) is processed as RGB and written back grey, 16-bit and float grey as 16-bit (16-bit
colour is read with 8 bits per channel, the most PIL holds, and of an animation only the first frame is taken: a
note says so; :mod:`sr_shrink.data` reads every image); an alpha
channel (RGBA, LA, palette with transparency) is upscaled with bicubic while the model upscales the colours. Large
images run in tiles of ``tile`` input pixels overlapping by at least the model's receptive field radius, so the
result equals an untiled run (see :mod:`sr_shrink.tiling`). Results are written as ``NAME_x{scale}.png`` into
the output folder, or next to each input when none is given; a result never overwrites an input image.

A folder among the inputs stands for the images directly inside it, less the results an earlier upscale wrote
there. Every input's header is checked before any work; the images are then read one at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .choices import UPSCALE_EXTS
from .data import Picture, has_alpha, list_images, probe_picture, read_picture
from .errors import SRShrinkError
from .io import atomic_path
from .progress import task
from .resize import upscale as bicubic
from .run import RunDir
from .runtimes import SUFFIXES, TorchRunner, open_runner
from .runtimes.base import UPSCALER_TIP
from .teachers.formats import image_kind
from .tiling import tile_calls, tile_work, tiled_apply

LUMA = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64)  # PIL's RGB -> L weights (ITU-R 601-2)
Log = Callable[[str], None]
TILE_WORK_NOTE = 2.0  # a note when tiling runs the model on more than this many times the images' pixels
WRITE_PHASE_PIXELS = 8_000_000  # results this large take seconds to PNG-encode: a progress phase of their own


@dataclass
class Upscaler:
    """A loaded model: ``fn`` maps LR RGB (1,3,h,w) in [0,1] to (1,3,s*h,s*w); ``radius`` is its receptive
    field radius in input pixels; ``input_hw`` the input size to tile at: a static graph's, or the default of
    the sizes an enumerated one takes (else None)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    scale: int
    radius: int
    input_hw: tuple[int, int] | None
    path: Path

    def _tiling(self, tile: int | None, overlap: int) -> tuple[int | tuple[int, int] | None, int, bool]:
        """Return the (tile, overlap, fixed) arguments :func:`tiled_apply` runs with for these options."""
        if self.input_hw:
            return self.input_hw, max(self.radius, min(overlap, (min(self.input_hw) - 1) // 2)), True
        return tile, max(self.radius, min(overlap, ((tile or 0) - 1) // 2)), False

    def apply(self, lr: torch.Tensor, tile: int | None = 256, overlap: int = 16,
              advance: Callable[[], None] | None = None) -> torch.Tensor:
        """Return the upscaled (1,3,sH,sW) image of ``lr``, in tiles of ``tile`` input pixels (a static
        graph's own size instead). The overlap is ``overlap`` cut to fit the tile, but never below the
        receptive field radius, which is what makes the seams exact. ``advance()`` is called after each tile."""
        fn = self.fn
        if advance is not None:
            def fn(x: torch.Tensor) -> torch.Tensor:
                out = self.fn(x)
                advance()
                return out
        tile_arg, ov, fixed = self._tiling(tile, overlap)
        return tiled_apply(fn, lr, self.scale, tile_arg, ov, fixed=fixed)

    def calls(self, size: tuple[int, int], tile: int | None = 256, overlap: int = 16) -> int:
        """Return how many model calls (tiles) :meth:`apply` makes on an LR image of ``size`` (h, w)."""
        tile_arg, ov, fixed = self._tiling(tile, overlap)
        return tile_calls(size, tile_arg, ov, fixed)

    def check_tile(self, tile: int | None, sizes: list[tuple[int, int]]) -> None:
        """Return None when tiles of ``tile`` input pixels can cover images of ``sizes`` (h, w); else raise a
        one-line SRShrinkError saying which --tile to pass. A tile must be larger than twice the receptive field
        radius (the overlap never goes below it), on images larger than the tile and models of free size."""
        if not tile or self.input_hw or tile > 2 * self.radius or all(max(hw) <= tile for hw in sizes):
            return
        raise SRShrinkError(f"--tile {tile} is too small for {self.path.name}: tiles overlap by its receptive field "
                            f"radius ({self.radius} px) on every side, so they must be larger than {2 * self.radius} "
                            f"px; pass --tile {max(256, 4 * self.radius)}, or --tile 0 for whole images.")

    def tile_note(self, tile: int | None, overlap: int, sizes: list[tuple[int, int]]) -> str | None:
        """Return a note when tiles of ``tile`` input pixels overlapping by ``overlap`` run the model on more than
        ``TILE_WORK_NOTE`` times the pixels of images of ``sizes`` (h, w) (a small --tile keeps a thin core of
        each tile: --tile 40 with the default overlap keeps 8 px of 40), naming what to pass; else None. Models of
        fixed input size tile at their own size and get none."""
        if not tile or self.input_hw:
            return None
        pixels = max(1, sum(h * w for h, w in sizes))

        def work(t: int) -> tuple[float, int]:  # (pixels run / image pixels, the overlap used) at tile t
            tile_arg, ov, _ = self._tiling(t, overlap)
            return sum(tile_work(hw, tile_arg, ov) for hw in sizes) / pixels, ov

        (ratio, ov), better = work(tile), max(256, 2 * tile)
        if ratio <= TILE_WORK_NOTE:
            return None
        least = (f", or a smaller --overlap (at least the model's receptive field radius, {self.radius})"
                 if ov > self.radius else "")
        return (f"note: --tile {tile} with an overlap of {ov} px on every side keeps {max(0, tile - 2 * ov)} px of "
                f"each tile, so the model runs on {ratio:.1f}x the images' pixels; pass --tile {better} "
                f"({work(better)[0]:.1f}x){least}.")


def _student_upscaler(path: Path, threads: int, device: str) -> Upscaler:
    from .run import load_stage

    model, _ = load_stage(path)
    runner = TorchRunner(model, threads, device, path=path)
    return Upscaler(runner.torch_fn(), model.scale, 2 * model.n_blocks + 2, None, path)


def probe_radius(fn: Callable[[torch.Tensor], torch.Tensor], size: tuple[int, int], scale: int) -> int:
    """Return the receptive field radius (input pixels) of ``fn`` found by perturbing the centre pixel of a
    random ``size`` input and measuring how far the output changes, plus a margin of 2."""
    h, w = size
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, h, w, generator=gen) * 0.6 + 0.2
    x2 = x.clone()
    cy, cx = h // 2, w // 2
    x2[..., cy, cx] += 0.3
    diff = (fn(x2) - fn(x)).abs().amax(dim=(0, 1))
    ys, xs = torch.nonzero(diff > 1e-6, as_tuple=True)
    if len(ys) == 0:
        return 2
    dy = max(abs(int(ys.min()) // scale - cy), abs(int(ys.max()) // scale - cy))
    dx = max(abs(int(xs.min()) // scale - cx), abs(int(xs.max()) // scale - cx))
    return max(dy, dx) + 2


def _exported_upscaler(path: Path, threads: int, device: str) -> Upscaler:
    runner = open_runner(path, threads, device)
    fn = runner.torch_fn()
    scale, size = runner.probe_scale()
    radius = probe_radius(fn, size, scale)
    if runner.tile_hw is None and radius >= min(size) // 2:  # the change reached the probe's border
        radius = probe_radius(fn, (192, 192), scale)
    return Upscaler(fn, scale, radius, runner.tile_hw, path)


def load_upscaler(path: str | Path, scale: int | None = None, threads: int | None = None,
                  device: str = "cpu") -> Upscaler:
    """Return an :class:`Upscaler` for a stage_XX.pt, .onnx, .tflite or .mlpackage; checks ``scale`` if given."""
    path = Path(path)
    exported = path.suffix.lower() in SUFFIXES
    if path.is_dir() and not exported:  # `upscale RUN PHOTO`: the run folder itself, not one of its students
        stages = sorted(path.glob("stage_*.pt"))
        hint = (f"pass one of its students, e.g. {stages[-1]} (the last stage)" if stages
                else "pass a stage_XX.pt, .onnx, .tflite or .mlpackage file")
        pick = RunDir(path, {}, {}).bench_pick()
        raise SRShrinkError(f"{path}: is a folder, not a model file; {hint}"
                            + (f", or bench's pick {pick}" if pick else "") + ".")
    if not (path.exists() if exported else path.is_file()):
        raise SRShrinkError(f"{path}: no such model file; pass a stage_XX.pt, .onnx, .tflite or .mlpackage.")
    kind = image_kind(path) if path.is_file() else None
    if kind is not None:
        raise SRShrinkError(f"{path}: this is a {kind} image, not a model; the model comes first: sr-shrink upscale "
                            "MODEL IMAGE...")
    threads = threads or torch.get_num_threads()
    up = _exported_upscaler(path, threads, device) if exported else _student_upscaler(path, threads, device)
    if up.scale < 2:  # an x1 model (a denoiser, a restorer) would write NAME_x1.png the size of the input
        raise SRShrinkError(f"{path}: this model does not upscale (its output is the size of its input, x1); "
                            f"{UPSCALER_TIP}")
    if scale is not None and scale != up.scale:
        raise SRShrinkError(f"{path}: this model upscales x{up.scale}, not x{scale}; pass --scale {up.scale} "
                            "or a model trained for that scale.")
    return up


def _bytes(t: torch.Tensor) -> np.ndarray:
    """Return an (H,W,C) uint8 array of a (C,H,W) float tensor in [0,1]."""
    return t.detach().clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).cpu().numpy()


def picture_image(pic: Picture) -> Image.Image:
    """Return a PIL image of ``pic``: I;16 for 16-bit grey pictures, L/LA for other grey ones, RGB/RGBA
    otherwise (grey is the ITU-R 601 luma PIL's ``convert("L")`` takes)."""
    if pic.grey and pic.bits == 16:
        luma = (pic.rgb.detach().double().clamp(0, 1).cpu() * LUMA.view(3, 1, 1)).sum(0)
        return Image.fromarray(luma.mul(65535).round().numpy().astype(np.uint16))  # uint16 -> mode I;16
    rgb = Image.fromarray(_bytes(pic.rgb))
    colour = rgb.convert("L") if pic.grey else rgb
    if pic.alpha is None:
        return colour
    colour.putalpha(Image.fromarray(_bytes(pic.alpha)[..., 0]))
    return colour


def upscale_picture(up: Upscaler, pic: Picture, tile: int | None = 256, overlap: int = 16,
                    advance: Callable[[], None] | None = None) -> Picture:
    """Return the upscaled :class:`Picture`: colours by the model (tiled; ``advance()`` after each tile), alpha
    by bicubic."""
    sr = up.apply(pic.rgb.unsqueeze(0), tile, overlap, advance)[0]
    alpha = bicubic(pic.alpha.unsqueeze(0), up.scale)[0].clamp(0, 1) if pic.alpha is not None else None
    return Picture(sr, alpha, pic.grey, pic.bits, pic.icc)


# zlib level of the PNGs written: OpenCV's default, which Real-ESRGAN's and chaiNNer's writers use; Pillow's
# default 6 took 4.5x as long for files about a fifth smaller (11 s for an 8000x6000 result; BENCHMARKS.md, 32).
PNG_LEVEL = 1
QUALITY = 95  # --quality default for jpg and webp (Pillow's 75 blurs the detail an upscale adds)
PIL_FORMAT = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP"}


def _save_image(image: Image.Image, path: Path, icc: bytes | None = None, quality: int = QUALITY) -> None:
    """Write ``image`` to ``path`` in the format its suffix names (PNG, JPEG or WebP at ``quality``) with the ICC
    profile ``icc`` (the input's), through a temp file renamed into place (returns nothing): a big result takes
    seconds to encode, and one cut short (Ctrl-C, a kill, a full disk) must not be left as a truncated
    NAME_x{s}.png that looks like a result. JPEG and WebP hold 8 bits: 16-bit grey is written with 8."""
    fmt = PIL_FORMAT[path.suffix.lower().lstrip(".")]
    grey_as_rgb = fmt == "WEBP" and image.mode in ("L", "LA", "I;16")  # WebP has no grey: Pillow writes RGB(A)
    opts: dict = {"icc_profile": icc} if icc and not grey_as_rgb else {}  # a grey profile would not fit RGB
    if fmt == "PNG":
        opts["compress_level"] = PNG_LEVEL
    else:
        opts["quality"] = quality
        if fmt == "JPEG":
            opts["subsampling"] = 0  # 4:4:4: full-resolution colour, the detail an upscale adds (+1.2 dB, 1.3x bytes)
        if image.mode == "I;16":
            image = Image.fromarray((np.asarray(image, dtype=np.float64) / 257).round().astype(np.uint8))
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **opts)


def output_path(out_dir: Path | None, image: Path, scale: int, suffix: str = "", ext: str = "png") -> Path:
    """Return ``OUT/NAME_x{scale}{suffix}.{ext}`` for an input image path (``out_dir`` None: the image's folder)."""
    return (image.parent if out_dir is None else out_dir) / f"{image.stem}_x{scale}{suffix}.{ext}"


def expand_folders(images: list[Path], scale: int, log: Log, ext: str = "png") -> list[Path]:
    """Return ``images`` with each folder among them replaced by the images directly inside it, sorted by name
    (:func:`~sr_shrink.data.list_images`), less the results an earlier upscale by ``scale`` to ``ext`` wrote there
    (``NAME_x{scale}.{ext}``, ``NAME_x{scale}_compare.png``; ``log`` gets a note of how many were left out)."""
    out: list[Path] = []
    for path in images:
        if not path.is_dir():
            out.append(path)
            continue
        files = list_images(path)
        own = {f for f in files if (f.suffix.lower() == f".{ext}" and re.fullmatch(rf".+_x{scale}", f.stem))
               or (f.suffix.lower() == ".png" and re.fullmatch(rf".+_x{scale}_compare", f.stem))}
        if len(own) == len(files):
            raise SRShrinkError(f"{path}: holds only results of an earlier upscale (*_x{scale}.{ext}); pass a "
                                "folder of images to upscale.")
        if own:
            log(f"note: {path}: left out {len(own)} result{'s' if len(own) > 1 else ''} of an earlier upscale "
                f"(*_x{scale}.{ext}); pass a file by name to upscale it.")
        out += [f for f in files if f not in own]
    return out


def _check_outputs(images: list[Path], out_dir: Path | None, scale: int, compare: bool, ext: str = "png") -> None:
    """Raise a one-line SRShrinkError when two results would share a file or a result would replace an input."""
    inputs = {p.resolve(): p for p in images}
    seen: dict[Path, Path] = {}
    for image in images:
        for suffix in ("", "_compare") if compare else ("",):
            out = output_path(out_dir, image, scale, suffix, ext if not suffix else "png")
            key = out.resolve()
            if key in inputs:
                raise SRShrinkError(f"the result for {image} would be written over the input {inputs[key]}; pass "
                                    "-o FOLDER to write the results elsewhere.")
            if key in seen:
                raise SRShrinkError(f"{seen[key]} and {image} would both be written to {out}; pass them in two "
                                    "runs or with -o to different folders.")
            seen[key] = image


def upscale_files(model: str | Path, images: list[str | Path], out_dir: str | Path | None = None,
                  tile: int | None = 256, overlap: int = 16, compare: bool = False,
                  teacher: str | Path | None = None, scale: int | None = None, threads: int | None = None,
                  device: str = "cpu", log: Log | None = None, value_range: float | None = None,
                  res_scale: float | None = None, crops: int = 1, ext: str = "png",
                  quality: int | None = None) -> list[Path]:
    """Upscale every image (a folder: the images in it, :func:`expand_folders`) with ``model`` into ``out_dir``
    (None: next to each input) as ``NAME_x{s}.{ext}`` (png, jpg or webp at ``quality``, default ``QUALITY``);
    return the paths written (results, then any ``NAME_x{s}_compare.png`` strips of ``crops`` windows when
    ``compare``, whose teacher takes the ``value_range`` and ``res_scale`` overrides). A result that would replace
    an input, two results sharing a file, or an image with alpha to be written as JPEG is an error before anything
    is written."""
    log = log or (lambda _m: None)
    given = [f for f, v in (("--teacher", teacher), ("--crops", crops != 1), ("--value-range", value_range),
                            ("--res-scale", res_scale)) if v]
    if given and not compare:  # they shape the teacher panel only
        raise SRShrinkError(f"{', '.join(given)} only applies to --compare; add --compare or drop it.")
    if ext not in UPSCALE_EXTS:
        raise SRShrinkError(f"--ext {ext}: pass one of {', '.join(UPSCALE_EXTS)}.")
    if quality is not None and ext == "png":
        raise SRShrinkError("--quality applies to --ext jpg or webp (PNG is lossless); add one or drop it.")
    images = [Path(p) for p in images]
    out_dir = Path(out_dir) if out_dir is not None else None
    if threads:
        torch.set_num_threads(threads)
    up = load_upscaler(model, scale, threads, device)
    notes: list[str] = []  # said once every input has passed its checks: a refused run prints its error alone
    images = expand_folders(images, up.scale, notes.append, ext)
    _check_outputs(images, out_dir, up.scale, compare, ext)
    headers = [probe_picture(p, eight_bit_out=ext != "png") for p in images]  # fail on a bad image before any work
    if ext == "jpg":
        clear = [p for p in images if has_alpha(p)]
        if clear:
            more = f" (and {len(clear) - 1} more)" if len(clear) > 1 else ""
            raise SRShrinkError(f"{clear[0]}{more}: has an alpha channel, which JPEG cannot hold; pass --ext png or "
                                "--ext webp.")
    up.check_tile(tile, [hw for hw, _ in headers])
    notes += [f"note: {path}: {note}." for path, (_, note) in zip(images, headers) if note]
    notes += [n for n in [up.tile_note(tile, overlap, [hw for hw, _ in headers])] if n]
    for note in notes:
        log(note)
    ref = None
    if compare:
        from .compare import reference_teacher

        ref = reference_teacher(up, teacher, device, log, value_range=value_range, res_scale=res_scale)
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    tiles = sum(up.calls(hw, tile, overlap) for hw, _ in headers)
    what = images[0].name if len(images) == 1 else f"{len(images)} images"
    with task(f"upscaling {what} with {up.path.name}", total=tiles, unit="tiles") as advance:
        for path in images:  # one image in memory at a time
            pic = read_picture(path)
            sr = upscale_picture(up, pic, tile, overlap, advance)
            written.append(output_path(out_dir, path, up.scale, ext=ext))
            image = picture_image(sr)
            big = image.width * image.height >= WRITE_PHASE_PIXELS
            with task(f"writing {written[-1].name} ({image.width}x{image.height} px)") if big else nullcontext():
                _save_image(image, written[-1], sr.icc, quality or QUALITY)
            log(f"wrote {written[-1]}")
            if compare:
                from .compare import compare_strip

                written.append(output_path(out_dir, path, up.scale, "_compare"))
                _save_image(compare_strip(pic.rgb, sr.rgb, up.scale, ref, crops=crops), written[-1],
                            None if pic.grey else pic.icc)  # the strip is RGB, and PNG
                log(f"wrote {written[-1]}")
    return written
