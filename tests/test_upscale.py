"""sr-shrink upscale: image modes, exact tiling, exported models, --compare and clear errors."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_teacher, one_error_line
from export_helpers import export_onnx, export_tflite
from PIL import Image

import sr_shrink.upscale as upscale_mod
from sr_shrink import progress
from sr_shrink.cli import main
from sr_shrink.errors import SRShrinkError
from sr_shrink.models.registry import save_model_checkpoint
from sr_shrink.models.student import SRStudent, load_student
from sr_shrink.resize import upscale as bicubic
from sr_shrink.run import RunDir
from sr_shrink.teachers import sha256_file
from sr_shrink.tiling import axis_spans, tile_calls, tile_starts, tiled_apply
from sr_shrink.upscale import load_upscaler, read_picture, upscale_files

HAVE_ORT = importlib.util.find_spec("onnxruntime") is not None
HAVE_LITERT = importlib.util.find_spec("ai_edge_litert") is not None and importlib.util.find_spec("litert_torch")


def _image(path: Path, mode: str, size=(40, 30), seed=0) -> Path:
    """Write a structured test image of ``mode`` and ``size`` (w, h); return its path."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    base = (127 + 100 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).astype(np.float64)
    chans = [base, base[::-1], np.roll(base, 7, axis=1), rng.integers(0, 256, (h, w))]
    arr = np.stack(chans, -1).clip(0, 255).astype(np.uint8)
    img = {"RGB": lambda: Image.fromarray(arr[..., :3]), "RGBA": lambda: Image.fromarray(arr),
           "L": lambda: Image.fromarray(arr[..., 0])}[mode]()
    img.save(path)
    return path


def _model_sr(model: SRStudent, rgb: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(rgb.unsqueeze(0))[0].clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()


def _run(*args: str):
    return CliRunner().invoke(main, ["upscale", *map(str, args)])


def test_rgb_image_equals_the_model_output(tiny_run, tmp_path):
    src = _image(tmp_path / "photo.png", "RGB")
    res = _run(tiny_run / "stage_02.pt", src, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    out = Image.open(tmp_path / "out" / "photo_x2.png")
    assert out.mode == "RGB" and out.size == (80, 60)
    model, _ = load_student(tiny_run / "stage_02.pt")
    assert np.array_equal(np.asarray(out), _model_sr(model, read_picture(src).rgb))


def _zlib_level(png: Path) -> int:
    """Return the FLEVEL field (0 fastest .. 3 best) of the zlib stream in ``png``'s first IDAT chunk."""
    data = png.read_bytes()
    at = data.index(b"IDAT") + 4
    return data[at + 1] >> 6


def test_results_are_written_at_the_fast_png_level(tiny_run, tmp_path):
    """PNG results use OpenCV's default zlib level 1 (Real-ESRGAN's and chaiNNer's writers), not Pillow's 6:
    4.5x faster on big results (BENCHMARKS 32); the pixels are the same."""
    src = _image(tmp_path / "photo.png", "RGB", size=(64, 48))
    res = _run(tiny_run / "stage_01.pt", src, "-o", tmp_path / "out", "--compare")
    assert res.exit_code == 0, res.output
    for name in ("photo_x2.png", "photo_x2_compare.png"):
        assert _zlib_level(tmp_path / "out" / name) == 0  # FLEVEL 0: levels 0-1
    Image.open(src).save(tmp_path / "default.png")
    assert _zlib_level(tmp_path / "default.png") == 2  # Pillow's default level 6: the control


def test_grey_image_comes_back_grey(tiny_run, tmp_path):
    src = _image(tmp_path / "grey.png", "L", size=(24, 20))
    written = upscale_files(tiny_run / "stage_01.pt", [src], tmp_path / "out")
    out = Image.open(written[0])
    assert written[0].name == "grey_x2.png" and out.mode == "L" and out.size == (48, 40)
    model, _ = load_student(tiny_run / "stage_01.pt")
    want = np.asarray(Image.fromarray(_model_sr(model, read_picture(src).rgb)).convert("L"))
    assert np.array_equal(np.asarray(out), want)


def test_16_bit_grey_comes_back_16_bit(tiny_run, tmp_path):
    h, w = 20, 24
    ramp = (np.linspace(0, 1, h * w).reshape(h, w) * 65535).round().astype(np.uint16)  # levels 8 bits cannot hold
    src = tmp_path / "depth.png"
    Image.fromarray(ramp).save(src)
    written = upscale_files(tiny_run / "stage_01.pt", [src], tmp_path / "out")
    out = Image.open(written[0])
    got = np.asarray(out)
    assert out.mode == "I;16" and got.dtype == np.uint16 and out.size == (48, 40)
    assert (got % 257 != 0).mean() > 0.5  # not 8-bit levels scaled up
    model, _ = load_student(tiny_run / "stage_01.pt")
    with torch.no_grad():
        sr = model(read_picture(src).rgb.unsqueeze(0))[0].clamp(0, 1).double()
    want = (sr * torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64).view(3, 1, 1)).sum(0) * 65535
    assert np.abs(got.astype(np.float64) - want.numpy()).max() <= 1.0


def test_a_photo_with_an_exif_orientation_is_upscaled_upright(tiny_run, tmp_path):
    """A phone photo stored sideways with EXIF orientation 6 (shown turned 90 degrees) used to come back sideways:
    the PNG result has no EXIF to turn it. It is turned upright first, as viewers show it."""
    src = _image(tmp_path / "upright.png", "RGB")  # 40 wide, 30 high as stored
    sideways = Image.open(src)
    exif = sideways.getexif()
    exif[0x0112] = 6  # stored turned; shown rotated 90 degrees clockwise: 30 wide, 40 high
    sideways.save(tmp_path / "phone.png", exif=exif)
    written = upscale_files(tiny_run / "stage_01.pt", [tmp_path / "phone.png"], tmp_path / "out")
    out = Image.open(written[0])
    assert out.size == (60, 80)
    upright = Image.open(src).transpose(Image.Transpose.ROTATE_270)  # what orientation 6 shows
    model, _ = load_student(tiny_run / "stage_01.pt")
    rgb = torch.from_numpy(np.asarray(upright, dtype=np.float32) / 255.0).permute(2, 0, 1)
    assert np.array_equal(np.asarray(out), _model_sr(model, rgb))


def _png16(path: Path, arr: np.ndarray) -> Path:
    """Write ``arr`` (h, w, 3) uint16 as a 16-bit RGB PNG (PIL cannot write one); return its path."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    h, w = arr.shape[:2]
    rows = b"".join(b"\0" + arr[y].astype(">u2").tobytes() for y in range(h))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))
    return path


def test_what_an_image_loses_is_said(tiny_run, tmp_path):
    """A 16-bit colour PNG (read by PIL with 8 bits) and an animated GIF (one frame taken) used to be upscaled
    to 8-bit RGB and to their first frame without a word; a note line says so for each."""
    deep = _png16(tmp_path / "deep.png", np.full((12, 10, 3), 40000, np.uint16))
    frames = [Image.new("RGB", (10, 8), c) for c in ("red", "blue", "green")]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    plain = _image(tmp_path / "plain.png", "RGB")
    res = _run(tiny_run / "stage_01.pt", deep, tmp_path / "anim.gif", plain, "-o", tmp_path / "out")
    assert res.exit_code == 0, res.output
    notes = [ln for ln in res.output.splitlines() if ln.startswith("note:")]
    assert notes == [f"note: {deep}: its 16-bit samples are read and written with 8 bits (PIL keeps 16 bits for grey "
                     "without alpha only).",
                     f"note: {tmp_path / 'anim.gif'}: it has 3 frames; only the first is upscaled."]
    assert Image.open(tmp_path / "out" / "deep_x2.png").size == (20, 24)
    assert Image.open(tmp_path / "out" / "anim_x2.png").size == (20, 16)


def test_the_inputs_colour_profile_comes_with_the_result(tiny_run, tmp_path):
    """An iPhone photo's Display P3 ICC profile was dropped, so viewers showed the result's colours as sRGB (duller).
    The result carries the input's RGB (or grey) profile; a CMYK JPEG's profile, whose colours are converted to
    RGB, is left out."""
    from PIL import ImageCms

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    src = tmp_path / "p3.png"
    Image.open(_image(tmp_path / "plain.png", "RGB")).save(src, icc_profile=profile)
    cmyk = tmp_path / "print.jpg"
    fake_cmyk = bytes(16) + b"CMYK" + bytes(108)  # only the header's colour space is read
    Image.new("CMYK", (20, 16), (10, 200, 30, 0)).save(cmyk, icc_profile=fake_cmyk)
    res = _run(tiny_run / "stage_02.pt", src, cmyk, tmp_path / "plain.png", "-o", tmp_path / "out", "--compare")
    assert res.exit_code == 0, res.output
    assert Image.open(tmp_path / "out" / "p3_x2.png").info.get("icc_profile") == profile
    assert Image.open(tmp_path / "out" / "p3_x2_compare.png").info.get("icc_profile") == profile
    assert "icc_profile" not in Image.open(tmp_path / "out" / "print_x2.png").info
    assert "icc_profile" not in Image.open(tmp_path / "out" / "plain_x2.png").info


def test_ext_jpg_and_webp_write_the_result_at_their_quality(tiny_run, tmp_path):
    """Results were PNG only: a 4x upscale of a 12 MP photo is a ~0.5 GB PNG. --ext jpg/webp write NAME_x{s}.jpg /
    .webp of the same result, encoded at --quality (95 by default; JPEG with full-resolution colour, 4:4:4); compare
    strips stay PNG."""
    import io

    src = _image(tmp_path / "photo.png", "RGB", size=(64, 48))
    assert _run(tiny_run / "stage_02.pt", src, "-o", tmp_path / "png").exit_code == 0
    result = Image.open(tmp_path / "png" / "photo_x2.png")
    for ext, quality in (("jpg", None), ("webp", None), ("jpg", "60")):
        out = tmp_path / f"{ext}{quality}"
        res = _run(tiny_run / "stage_02.pt", src, "-o", out, "--ext", ext, "--compare",
                   *(["--quality", quality] if quality else []))
        assert res.exit_code == 0, res.output
        assert sorted(p.name for p in out.iterdir()) == [f"photo_x2.{ext}", "photo_x2_compare.png"]
        got = Image.open(out / f"photo_x2.{ext}")
        want = io.BytesIO()
        fmt = {"jpg": "JPEG", "webp": "WEBP"}[ext]
        result.save(want, format=fmt, quality=int(quality or 95), **({"subsampling": 0} if ext == "jpg" else {}))
        assert got.format == fmt and np.array_equal(np.asarray(got), np.asarray(Image.open(want)))
    # negative control: the default quality is not what --quality 60 wrote
    assert not np.array_equal(np.asarray(Image.open(tmp_path / "jpgNone" / "photo_x2.jpg")),
                              np.asarray(Image.open(tmp_path / "jpg60" / "photo_x2.jpg")))


def test_ext_refusals_are_one_line_before_any_work(tiny_run, tmp_path):
    logo = _image(tmp_path / "logo.png", "RGBA")
    line = one_error_line(_run(tiny_run / "stage_02.pt", logo, "-o", tmp_path / "a", "--ext", "jpg"))
    assert line == f"error: {logo}: has an alpha channel, which JPEG cannot hold; pass --ext png or --ext webp."
    assert not (tmp_path / "a").exists()
    assert _run(tiny_run / "stage_02.pt", logo, "-o", tmp_path / "b", "--ext", "webp").exit_code == 0
    assert Image.open(tmp_path / "b" / "logo_x2.webp").mode == "RGBA"
    line = one_error_line(_run(tiny_run / "stage_02.pt", logo, "-o", tmp_path / "c", "--quality", "80"))
    assert line == "error: --quality applies to --ext jpg or webp (PNG is lossless); add one or drop it."


def test_a_folder_leaves_out_earlier_results_of_the_same_ext(tiny_run, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    _image(folder / "a.png", "RGB")
    assert _run(tiny_run / "stage_02.pt", folder, "--ext", "jpg").exit_code == 0
    assert (folder / "a_x2.jpg").exists()
    res = _run(tiny_run / "stage_02.pt", folder, "--ext", "jpg")
    assert res.exit_code == 0 and "left out 1 result of an earlier upscale (*_x2.jpg)" in " ".join(res.output.split())
    assert not (folder / "a_x2_x2.jpg").exists()


def test_16_bit_grey_to_an_8_bit_format_says_so(tiny_run, tmp_path):
    """A 16-bit grey input comes back 16-bit as PNG, but JPEG and WebP hold 8 bits: --ext jpg/webp wrote it with 8
    in silence. A note says so (and that --ext png keeps 16); an 8-bit grey input and a PNG result get none."""
    deep = tmp_path / "depth.png"
    Image.fromarray((np.linspace(0, 1, 20 * 24).reshape(20, 24) * 65535).round().astype(np.uint16)).save(deep)
    plain = _image(tmp_path / "plain.png", "L", size=(24, 20))
    note = f"note: {deep}: its grey samples have more than 8 bits and are written with 8, all JPEG and WebP hold " \
           "(--ext png keeps 16)."
    for ext, said in (("jpg", True), ("webp", True), ("png", False)):
        res = _run(tiny_run / "stage_01.pt", deep, plain, "-o", tmp_path / ext, "--ext", ext)
        assert res.exit_code == 0, res.output
        text = " ".join(res.output.split())
        assert (note in text) is said and "plain.png:" not in text, (ext, text)
    assert Image.open(tmp_path / "jpg" / "depth_x2.jpg").mode == "L"


def test_a_grey_profile_stays_with_grey_results_only(tiny_run, tmp_path):
    """A grey image's GRAY profile fits its grey PNG result; WebP has no grey mode (Pillow writes RGB), so there it
    is left out rather than put on RGB colours."""
    src = tmp_path / "scan.png"
    grey_icc = bytes(16) + b"GRAY" + bytes(108)  # only the header's colour space is read
    Image.open(_image(tmp_path / "plain.png", "L")).save(src, icc_profile=grey_icc)
    for ext, kept in (("png", True), ("webp", False)):
        assert _run(tiny_run / "stage_02.pt", src, "-o", tmp_path / ext, "--ext", ext).exit_code == 0
        out = Image.open(tmp_path / ext / f"scan_x2.{ext}")
        assert (out.info.get("icc_profile") == grey_icc) is kept, (ext, out.mode)


def test_rgba_keeps_bicubic_alpha(tiny_run, tmp_path):
    src = _image(tmp_path / "logo.png", "RGBA", size=(20, 16))
    written = upscale_files(tiny_run / "stage_02.pt", [src], tmp_path / "out", tile=None)
    out = np.asarray(Image.open(written[0]))
    assert out.shape == (32, 40, 4)
    pic = read_picture(src)
    alpha = bicubic(pic.alpha.unsqueeze(0), 2)[0, 0].clamp(0, 1).mul(255).round().byte().numpy()
    assert np.array_equal(out[..., 3], alpha)
    model, _ = load_student(tiny_run / "stage_02.pt")
    assert np.array_equal(out[..., :3], _model_sr(model, pic.rgb))


def test_tiled_equals_untiled_for_a_float_model(tiny_run):
    up = load_upscaler(tiny_run / "stage_02.pt")
    assert up.radius == 6  # head + 2 convs per block x 2 + tail
    lr = torch.rand(1, 3, 70, 53, generator=torch.Generator().manual_seed(3))
    whole = up.apply(lr, tile=None)
    tiled = up.apply(lr, tile=24, overlap=0)  # overlap is raised to the receptive radius
    assert tiled.shape == whole.shape == (1, 3, 140, 106)
    assert (tiled - whole).abs().max() < 1e-5
    too_small = tiled_apply(up.fn, lr, 2, 24, overlap=2)  # the check above can fail: a seam shows
    assert (too_small - whole).abs().max() > 1e-3


def test_a_tile_below_the_receptive_field_says_which_tile_to_pass(tiny_run, tmp_path):
    """--tile 8 on a model of radius 6 used to fail after the output folder was made, advising 'a smaller
    --overlap', which cannot help (the overlap is raised to the radius). It fails first, naming a tile that works."""
    src = _image(tmp_path / "p.png", "RGB")
    line = one_error_line(_run(tiny_run / "stage_02.pt", src, "-o", tmp_path / "out", "--tile", "8", "--overlap", "0"))
    assert line == ("error: --tile 8 is too small for stage_02.pt: tiles overlap by its receptive field radius (6 px) "
                    "on every side, so they must be larger than 12 px; pass --tile 256, or --tile 0 for whole images.")
    assert not (tmp_path / "out").exists()
    assert _run(tiny_run / "stage_02.pt", src, "-o", tmp_path / "out", "--tile", "13").exit_code == 0  # 13 > 12


def test_a_tile_that_keeps_a_thin_core_says_what_it_costs(tiny_run, tmp_path):
    """--tile 13 on a model of radius 6 keeps 1 px of each tile: the model ran on ~100x the pixels, silently. A
    note says so and what to pass; the default tile and whole images get none."""
    src = _image(tmp_path / "p.png", "RGB", size=(60, 50))
    res = _run(tiny_run / "stage_02.pt", src, "-o", tmp_path / "a", "--tile", "13")
    assert res.exit_code == 0, res.output
    text = " ".join(res.output.split())
    ratio = float(re.search(r"so the model runs on ([0-9.]+)x the images' pixels", text).group(1))
    assert ratio > 50, text
    assert ("note: --tile 13 with an overlap of 6 px on every side keeps 1 px of each tile, so the model runs on "
            f"{ratio:.1f}x the images' pixels; pass --tile 256 (1.0x).") in text, text
    wide = " ".join(_run(tiny_run / "stage_02.pt", src, "-o", tmp_path / "b", "--tile", "30", "--overlap",
                         "12").output.split())
    assert "or a smaller --overlap (at least the model's receptive field radius, 6)" in wide, wide
    for tile in ("256", "0"):
        assert "--tile" not in _run(tiny_run / "stage_02.pt", src, "-o", tmp_path / tile, "--tile", tile).output


def test_tile_plan_covers_every_pixel_once_or_more():
    for length, tile, ov in [(100, 32, 6), (33, 32, 6), (64, 32, 0), (20, 32, 6)]:
        covered = np.zeros(length, bool)
        for sp in axis_spans(length, tile, ov, fixed=True):
            covered[sp.lo : sp.hi] = True
            assert sp.stop - sp.start + sp.pad_before + sp.pad_after == tile
        assert covered.all(), (length, tile, ov)
    assert tile_starts(100, 32, 6) == [0, 20, 40, 60, 68]
    with pytest.raises(SRShrinkError, match="too small for overlap"):
        tile_starts(100, 12, 6)


def test_large_image_through_the_cli_is_tiled_exactly(tiny_run, tmp_path):
    src = _image(tmp_path / "big.png", "RGB", size=(90, 75))
    assert _run(tiny_run / "stage_02.pt", src, "-o", tmp_path / "a", "--tile", "32").exit_code == 0
    assert _run(tiny_run / "stage_02.pt", src, "-o", tmp_path / "b", "--tile", "0").exit_code == 0
    a = np.asarray(Image.open(tmp_path / "a" / "big_x2.png")).astype(int)
    b = np.asarray(Image.open(tmp_path / "b" / "big_x2.png")).astype(int)
    # exact up to float rounding (see test_tiled_equals_untiled_for_a_float_model): a value that lands within
    # ~1e-7 of a .5 boundary may round to the neighbouring 8-bit level, so allow that, on a handful of values
    assert a.shape == (150, 180, 3) and np.abs(a - b).max() <= 1 and (a != b).sum() <= 3


def test_tile_calls_counts_the_calls_of_tiled_apply():
    for (h, w), tile, ov, fixed in [((75, 90), 32, 6, False), ((20, 20), 32, 6, False), ((45, 70), (32, 32), 6, True),
                                    ((20, 26), (32, 32), 6, True), ((64, 64), 0, 6, False)]:
        calls: list[int] = []

        def fn(x: torch.Tensor, calls: list[int] = calls) -> torch.Tensor:
            calls.append(1)
            return x.repeat_interleave(2, -1).repeat_interleave(2, -2)

        tiled_apply(fn, torch.zeros(1, 3, h, w), 2, tile, ov, fixed=fixed)
        assert tile_calls((h, w), tile, ov, fixed) == len(calls), (h, w, tile)


def test_upscale_shows_progress_on_a_big_image(tiny_run, tmp_path, monkeypatch):
    """A big photo takes minutes on a phone-class CPU: the tiles are counted as they run, a big result's PNG
    encoding is a phase of its own, and so are --compare's scan and teacher windows (plain lines when piped)."""
    monkeypatch.setattr(progress, "PLAIN_EVERY_S", 0.0)  # a line on every tile
    monkeypatch.setattr(upscale_mod, "WRITE_PHASE_PIXELS", 10_000)
    teacher = SRStudent(2, 1, 8)
    t_path = save_model_checkpoint(teacher, "student", teacher.config(), tmp_path / "teacher.pt")
    src = _image(tmp_path / "big.png", "RGB", size=(300, 280))
    res = _run(tiny_run / "stage_02.pt", src, "-o", tmp_path / "out", "--tile", "64", "--compare",
               "--teacher", t_path)
    assert res.exit_code == 0, res.output
    err = res.stderr.splitlines()
    n = upscale_mod.load_upscaler(tiny_run / "stage_02.pt").calls((280, 300), 64, 16)
    assert n > 4 and f"upscaling big.png with stage_02.pt: started ({n} tiles)" in err, res.stderr
    assert any(ln.startswith(f"upscaling big.png with stage_02.pt: 2/{n}, ") and "left" in ln for ln in err)
    assert any(ln.startswith("upscaling big.png with stage_02.pt: done in ") for ln in err)
    assert "writing big_x2.png (600x560 px): started" in err
    assert any(ln.startswith("finding where the student differs most from bicubic: started (2 bands") for ln in err)
    assert any(ln.startswith("running the teacher for the comparison: started (3 candidate windows)") for ln in err)
    res = _run(tiny_run / "stage_02.pt", src, "-o", tmp_path / "whole", "--tile", "0")
    assert "upscaling big.png with stage_02.pt: started (1 tile)" in res.stderr.splitlines(), res.stderr


@pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed")
def test_onnx_model_upscales_like_the_checkpoint(tiny_run, tmp_path):
    model, _ = load_student(tiny_run / "stage_02.pt")
    up = load_upscaler(export_onnx(model, tmp_path / "m.onnx"), scale=2)
    assert up.scale == 2 and up.input_hw is None and up.radius >= 6
    lr = torch.rand(1, 3, 50, 41, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(lr)
    assert (up.apply(lr, tile=20) - want).abs().max() < 1e-4


@pytest.mark.skipif(not HAVE_LITERT, reason="litert not installed")
def test_fixed_size_tflite_handles_bigger_and_smaller_images(tiny_run, tmp_path):
    model, _ = load_student(tiny_run / "stage_02.pt")
    up = load_upscaler(export_tflite(model, tmp_path / "m.tflite", (32, 32)))
    assert up.input_hw == (32, 32) and up.scale == 2
    for h, w in [(45, 70), (20, 26)]:  # tiled; padded twice per short axis
        lr = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(h))
        with torch.no_grad():
            want = model(lr)
        assert (up.apply(lr) - want).abs().max() < 1e-4


def test_compare_writes_three_panels_with_a_teacher(tiny_run, tmp_path):
    teacher = SRStudent(2, 1, 8)
    torch.nn.init.normal_(teacher.tail.weight, 0, 0.01)
    t_path = save_model_checkpoint(teacher, "student", teacher.config(), tmp_path / "teacher.pt")
    src = _image(tmp_path / "scene.png", "RGB", size=(120, 100))
    res = _run(tiny_run / "stage_01.pt", src, "-o", tmp_path / "out", "--compare", "--teacher", t_path)
    assert res.exit_code == 0, res.output
    strip = Image.open(tmp_path / "out" / "scene_x2_compare.png")
    assert strip.size == (3 * 240 + 8, 200 + 16)  # the whole 120x100 image (x2) is smaller than 256 px panels
    assert (tmp_path / "out" / "scene_x2.png").is_file()


def test_compare_without_any_teacher_has_two_panels(tiny_run, tmp_path, monkeypatch):
    import sr_shrink.teachers.load as teacher_load

    monkeypatch.setattr(teacher_load, "ASSETS", tmp_path / "no_bundled_teachers")
    src = _image(tmp_path / "small.png", "RGB", size=(40, 30))
    notes: list[str] = []
    upscale_files(tiny_run / "stage_01.pt", [src], tmp_path / "out", compare=True, log=notes.append)
    assert Image.open(tmp_path / "out" / "small_x2_compare.png").size == (2 * 80 + 4, 60 + 16)
    assert any("no teacher found" in n for n in notes)


def test_unreadable_image_is_a_clear_error(tiny_run, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image at all")
    res = _run(tiny_run / "stage_01.pt", bad, "-o", tmp_path / "out")
    assert res.exit_code == 2 and "broken.png: cannot read this image" in res.output
    assert not (tmp_path / "out").exists()  # failed before writing anything
    res = _run(tiny_run / "stage_01.pt", tmp_path / "missing.png", "-o", tmp_path / "out")
    assert res.exit_code == 2 and "no such image file" in res.output


def test_model_of_another_scale_is_a_clear_error(tiny_run, tmp_path):
    src = _image(tmp_path / "p.png", "RGB")
    res = _run(tiny_run / "stage_01.pt", src, "-o", tmp_path / "out", "--scale", "3")
    assert res.exit_code == 2 and "upscales x2, not x3" in res.output
    res = _run(tmp_path / "nope.pt", src, "-o", tmp_path / "out")
    assert res.exit_code == 2 and "no such model file" in res.output


def test_an_unreadable_stage_file_of_a_run_says_to_resume_it(tiny_run, tmp_path):
    path = tiny_run / "stage_02.pt"
    path.write_bytes(path.read_bytes()[:200])
    res = _run(path, _image(tmp_path / "p.png", "RGB"), "-o", tmp_path / "out")
    line = one_error_line(res)
    assert line.startswith(f"error: {path}: not a readable sr-shrink checkpoint (")
    assert f"rerun `sr-shrink distill ... --out {tiny_run} --resume`" in line
    assert not (tmp_path / "out").exists()


def test_without_out_writes_next_to_each_input(tiny_run, tmp_path):
    a = _image((tmp_path / "one").mkdir() or tmp_path / "one" / "shot.png", "RGB")
    b = _image((tmp_path / "two").mkdir() or tmp_path / "two" / "shot.png", "RGB", seed=1)
    res = _run(tiny_run / "stage_01.pt", a, b)
    assert res.exit_code == 0, res.output
    for src in (a, b):
        out = src.parent / "shot_x2.png"
        assert out.is_file() and f"wrote {out}" in res.output
        assert Image.open(out).size == (80, 60)
    assert Image.open(a).size == (40, 30)  # the inputs are untouched


def test_a_result_never_replaces_an_input(tiny_run, tmp_path):
    src = _image(tmp_path / "cat.png", "RGB")
    clash = _image(tmp_path / "cat_x2.png", "RGB", seed=3)  # the result of cat.png would land on this input
    before = clash.read_bytes()
    res = _run(tiny_run / "stage_01.pt", src, clash)
    assert res.exit_code == 2 and "would be written over the input" in res.output and "-o" in res.output
    assert clash.read_bytes() == before and not (tmp_path / "cat_x2_x2.png").exists()
    with pytest.raises(SRShrinkError, match="both be written"):
        upscale_files(tiny_run / "stage_01.pt", [src, src.parent / "." / "cat.png"], tmp_path / "out")


def test_a_folder_of_images_upscales_each_and_leaves_out_earlier_results(tiny_run, tmp_path):
    """As Real-ESRGAN's ``-i FOLDER``: a folder stands for the images in it (sorted, not its subfolders or other
    files); a rerun next to the results leaves the earlier results out with a note instead of upscaling them."""
    photos = tmp_path / "photos"
    photos.mkdir()
    a = _image(photos / "a.png", "RGB")
    _image(photos / "b.jpg", "RGB", seed=1)
    (photos / "notes.txt").write_text("not an image")
    (photos / "sub").mkdir()
    _image(photos / "sub" / "c.png", "RGB")
    single = _image(tmp_path / "d.png", "RGB", seed=2)
    res = _run(tiny_run / "stage_01.pt", photos, single)
    assert res.exit_code == 0, res.output
    wrote = [line.split()[-1] for line in res.output.splitlines() if line.startswith("wrote ")]
    assert wrote == [str(photos / "a_x2.png"), str(photos / "b_x2.png"), str(tmp_path / "d_x2.png")]
    model = load_student(tiny_run / "stage_01.pt")[0]
    got = np.asarray(Image.open(photos / "a_x2.png"))
    assert np.abs(got.astype(int) - _model_sr(model, read_picture(a).rgb).astype(int)).max() <= 1
    again = _run(tiny_run / "stage_01.pt", photos)  # the results are in the folder now
    assert again.exit_code == 0, again.output
    assert "note: " + str(photos) + ": left out 2 results of an earlier upscale (*_x2.png)" in again.output
    assert not (photos / "a_x2_x2.png").exists() and not (photos / "sub" / "c_x2.png").exists()
    results_only = tmp_path / "results"
    results_only.mkdir()
    _image(results_only / "e_x2.png", "RGB")
    assert one_error_line(_run(tiny_run / "stage_01.pt", results_only)) == (
        f"error: {results_only}: holds only results of an earlier upscale (*_x2.png); pass a folder of images to "
        "upscale.")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "holds no images (.png, .jpg" in one_error_line(_run(tiny_run / "stage_01.pt", empty))
    (photos / "broken.png").write_bytes(b"not an image")  # refused: its error alone, not the note before it
    assert "broken.png: cannot read this image" in one_error_line(_run(tiny_run / "stage_01.pt", photos))


def test_images_are_checked_first_then_read_one_at_a_time(tiny_run, tmp_path, monkeypatch):
    """A folder of photos is not held in memory at once: headers are checked before any work (a bad file fails
    with nothing written), then each image is decoded just before it is upscaled."""
    import sr_shrink.upscale as up_mod

    a, b = _image(tmp_path / "a.png", "RGB"), _image(tmp_path / "b.png", "RGB", seed=1)
    events: list[str] = []
    real = up_mod.read_picture
    monkeypatch.setattr(up_mod, "read_picture", lambda p: events.append(f"read {Path(p).name}") or real(p))
    upscale_files(tiny_run / "stage_01.pt", [a, b], tmp_path / "out", log=lambda m: events.append(m.split("/")[-1]))
    assert events == ["read a.png", "a_x2.png", "read b.png", "b_x2.png"]
    bad = tmp_path / "c.png"
    bad.write_bytes(a.read_bytes()[:60])  # a PNG cut short in its pixel data: its header reads
    with pytest.raises(SRShrinkError, match="c.png: cannot read this image"):
        upscale_files(tiny_run / "stage_01.pt", [a, bad], tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_the_header_check_does_not_decode_the_pixels(tmp_path, monkeypatch):
    """probe_picture runs on every input before any work (a folder of photos): it must not decode them, which a
    PNG's getexif() does when no eXIf chunk precedes the pixels."""
    from PIL import PngImagePlugin

    from sr_shrink.upscale import probe_picture

    plain = _image(tmp_path / "plain.png", "RGB", size=(40, 30))
    turned = tmp_path / "turned.png"
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(plain).save(turned, exif=exif)
    loads: list[str] = []
    real = PngImagePlugin.PngImageFile.load
    monkeypatch.setattr(PngImagePlugin.PngImageFile, "load", lambda im: loads.append("load") or real(im))
    assert probe_picture(plain) == ((30, 40), None) and probe_picture(turned) == ((40, 30), None)
    assert loads == []


def test_an_image_passed_as_the_model_is_named(tmp_path):
    photo = _image(tmp_path / "photo.png", "RGB")
    res = _run(photo, photo)
    assert res.exit_code == 2 and "PNG image, not a model" in res.output


def _foreign_onnx(path: Path, in_channels: int, out_channels: int, factor: float = 2.0) -> Path:
    """Write an .onnx that is no sr-shrink export: a nearest x``factor`` resize of ``in_channels`` channels whose
    output keeps only the first ``out_channels`` of them."""
    import onnx
    from onnx import TensorProto, helper

    def const(name, values, kind=TensorProto.FLOAT):
        return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, kind, [len(values)], values))

    nodes = [const("roi", []), const("scales", [1.0, 1.0, factor, factor]), const("starts", [0], TensorProto.INT64),
             const("ends", [out_channels], TensorProto.INT64), const("axes", [1], TensorProto.INT64),
             helper.make_node("Resize", ["x", "roi", "scales"], ["up"], mode="nearest"),
             helper.make_node("Slice", ["up", "starts", "ends", "axes"], ["y"])]
    graph = helper.make_graph(nodes, "foreign", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                [1, in_channels, "h", "w"])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed")
@pytest.mark.parametrize("in_channels, out_channels, says", [(1, 1, "its input has shape (1, 1, 'h', 'w')"),
                                                             (3, 1, "its output has shape (1, 1, 128, 128)")])
def test_an_onnx_that_is_not_an_rgb_model_is_a_clear_error(tmp_path, in_channels, out_channels, says):
    """A foreign .onnx (a Y-channel model, or one with a single output channel) used to end in ONNX Runtime's or
    PIL's traceback with exit status 1."""
    model = _foreign_onnx(tmp_path / "foreign.onnx", in_channels, out_channels)
    res = _run(model, _image(tmp_path / "photo.png", "RGB"), "-o", tmp_path / "out")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), res.output
    assert says in lines[0] and "3-channel" in lines[0] and not (tmp_path / "out").exists()

def _bump(x: torch.Tensor) -> torch.Tensor:
    """A fake teacher: bicubic plus a strong change wherever the (upscaled) input is very bright."""
    up = bicubic(x, 2)
    return (up + 0.5 * (up > 0.9).float()).clamp(0, 1)


def test_compare_picks_where_teacher_and_bicubic_differ_most():
    from sr_shrink.compare import choose_windows

    lr = torch.full((3, 200, 300), 0.3)
    lr[:, 150:190, 220:280] = 0.95  # bright: only here does the teacher differ from bicubic
    sr = bicubic(lr.unsqueeze(0), 2)[0]
    sr[:, 20:80, 20:80] += 0.3  # the student differs from bicubic most in a dark corner...
    sr[:, 300:380, 440:560] += 0.1  # ...and somewhat on the bright patch
    (y, x, t), = choose_windows(lr, sr, 2, _bump, crops=1, size=40)
    assert 150 - 40 < y <= 190 and 220 - 40 < x <= 280, (y, x)  # the teacher's ranking wins
    (y0, x0, t0), = choose_windows(lr, sr, 2, None, crops=1, size=40)
    assert y0 < 40 and x0 < 40 and t0 is None  # without a teacher: the student's difference


def test_compare_crops_give_rows_of_256_px_panels():
    from sr_shrink.compare import compare_strip, top_windows

    lr = torch.rand(3, 300, 400, generator=torch.Generator().manual_seed(0))
    sr = bicubic(lr.unsqueeze(0), 2)[0]
    strip = compare_strip(lr, sr, 2, _bump, crops=3)
    assert strip.size == (3 * 256 + 8, 3 * (256 + 16) + 8)
    wins = top_windows(torch.rand(100, 100), 30, 30, 3)
    assert len(wins) == 3 and all(abs(a[0] - b[0]) >= 30 or abs(a[1] - b[1]) >= 30
                                  for i, a in enumerate(wins) for b in wins[i + 1:])  # no two overlap


@pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed")
@pytest.mark.parametrize("factor, says", [
    (1.0, "this model does not upscale (its output is the size of its input, x1)"),
    (1.5, "is not a whole-number upscaling"),
    (0.5, "is not a whole-number upscaling"),
])
def test_a_model_that_does_not_upscale_by_a_whole_factor_is_refused(tmp_path, factor, says):
    """A foreign x1 .onnx (output the size of the input) used to be run and written as photo_x1.png."""
    model = _foreign_onnx(tmp_path / "same.onnx", 3, 3, factor)
    res = _run(model, _image(tmp_path / "photo.png", "RGB"), "-o", tmp_path / "out")
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {model}: "), res.output
    assert says in lines[0] and lines[0].endswith("upscales by a whole factor of 2 or more (x2, x3, x4).")
    assert not (tmp_path / "out").exists()
    assert load_upscaler(_foreign_onnx(tmp_path / "x3.onnx", 3, 3, 3.0)).scale == 3


@pytest.mark.skipif(not HAVE_ORT, reason="onnxruntime not installed")
def test_compare_uses_the_run_of_a_file_exported_elsewhere(tiny_run, tmp_path):
    """`export --out APP/` writes the file and its export.json outside the run: --compare used to show the bundled
    teacher in the 'teacher' panel without a word. The export.json beside the file now leads to the run (and its
    teacher); a file with no run says which teacher the panel shows."""
    teacher = make_tiny_teacher(tmp_path / "teacher.pt")
    record = json.loads((tiny_run / "run.json").read_text())
    record["teacher"] = {"path": str(teacher), "sha256": sha256_file(teacher)}
    (tiny_run / "run.json").write_text(json.dumps(record))
    model, _ = load_student(tiny_run / "stage_02.pt")
    app = export_onnx(model, tmp_path / "app" / "sr.onnx")
    (app.parent / "export.json").write_text(json.dumps({"sr_shrink_exports": 1, "run": {"path": str(tiny_run)},
                                                          "exports": [{"file": "sr.onnx"}]}))
    assert RunDir.find(app).root.resolve() == tiny_run.resolve()
    src = _image(tmp_path / "scene.png", "RGB", size=(60, 50))
    notes: list[str] = []
    upscale_files(app, [src], tmp_path / "out", compare=True, log=notes.append)
    assert not any("teacher" in n for n in notes), notes  # the run's own teacher, nothing to say
    lonely = tmp_path / "elsewhere" / "sr.onnx"
    lonely.parent.mkdir()
    lonely.write_bytes(app.read_bytes())
    assert RunDir.find(lonely) is None
    notes.clear()
    upscale_files(lonely, [src], tmp_path / "out2", compare=True, log=notes.append)
    assert any(n.startswith("note: sr.onnx is not in a run folder") and "bundled x2 teacher" in n for n in notes)


def test_a_run_folder_as_the_model_names_its_last_stage(tiny_run, tmp_path):
    """`upscale RUN PHOTO` said 'RUN: no such model file' of a folder that exists; it now names the file to pass."""
    src = _image(tmp_path / "photo.png", "RGB")
    line = one_error_line(_run(tiny_run, src))
    assert line == (f"error: {tiny_run}: is a folder, not a model file; pass one of its students, e.g. "
                    f"{tiny_run / 'stage_02.pt'} (the last stage).")
    (tmp_path / "empty").mkdir()
    line = one_error_line(_run(tmp_path / "empty", src))
    assert "is a folder, not a model file; pass a stage_XX.pt, .onnx, .tflite or .mlpackage file." in line


def test_a_benched_run_folder_as_the_model_names_the_pick_too(tiny_run, tmp_path):
    """After `bench RUN` printed 'file to ship: ...', `upscale RUN PHOTO` named only the last stage; it names
    bench's pick too, found in RUN/exports (bench.json records the path as bench was given it)."""
    import json

    src = _image(tmp_path / "photo.png", "RGB")
    run = tiny_run  # a fresh one per test
    (run / "exports").mkdir(exist_ok=True)
    (run / "exports" / "stage_01_int8.tflite").write_bytes(b"x")
    last = f"error: {run}: is a folder, not a model file; pass one of its students, e.g. {run / 'stage_02.pt'} " \
           "(the last stage)"
    for bench, pick in [({"recommended": {"path": "elsewhere/exports/stage_01_int8.tflite"}}, True),
                        ({"recommended": {"path": "elsewhere/exports/stage_02_int8.tflite"}}, False),  # not there
                        ({"recommended": None}, False), ("{damaged", False)]:
        (run / "bench.json").write_text(bench if isinstance(bench, str) else json.dumps(bench))
        want = last + (f", or bench's pick {run / 'exports' / 'stage_01_int8.tflite'}." if pick else ".")
        assert one_error_line(_run(run, src)) == want, bench


def test_an_interrupted_write_leaves_no_truncated_result(tiny_run, tmp_path, monkeypatch):
    """Ctrl-C while a big result was PNG-encoded (seconds for a 48 MP image) left a truncated NAME_x{s}.png that
    looked like a result; results are now written to a temp file and renamed into place."""
    src = _image(tmp_path / "photo.png", "RGB")
    real_save = Image.Image.save

    def cut_short(self, fp, *args, **kwargs):
        real_save(self, fp, *args, **kwargs)
        with open(fp, "r+b") as f:  # the encoder got half way
            f.truncate(50)
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", cut_short)
    with pytest.raises(KeyboardInterrupt):
        upscale_files(tiny_run / "stage_02.pt", [src], tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # no photo_x2.png, no temp file
    monkeypatch.setattr(Image.Image, "save", real_save)
    upscale_files(tiny_run / "stage_02.pt", [src], tmp_path / "out")
    assert Image.open(tmp_path / "out" / "photo_x2.png").size == (80, 60)
