"""One runtime layer: every export variant (ONNX nchw/nhwc x fp32/fp16/int8, fp16 I/O, fixed-size TFLite with
float or int8 I/O, Core ML) runs through sr_shrink.runtimes in export verification, bench and upscale alike,
and matches the PyTorch student, so a layout, dtype or input-size bug in any of them fails here."""

from __future__ import annotations

import math
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from conftest import make_tiny_eval
from PIL import Image

from sr_shrink.bench import BenchConfig, run_bench
from sr_shrink.cli import main
from sr_shrink.data import load_eval_set
from sr_shrink.errors import SRShrinkError
from sr_shrink.export import TOLERANCE_DB
from sr_shrink.models.student import load_student
from sr_shrink.runtimes import LiteRTRunner, MILRunner, OrtRunner, open_runner, tflite_metadata
from sr_shrink.upscale import load_upscaler

# name -> (target, precision, export options, layout, input dtype, fixed LR input (h, w) or None)
VARIANTS = {
    "onnx_nchw_fp32": ("onnx", "fp32", {}, "nchw", "float32", None),
    "onnx_nchw_fp16": ("onnx", "fp16", {}, "nchw", "float32", None),
    "onnx_nchw_fp16_native_io": ("onnx", "fp16", {"native_io": True}, "nchw", "float16", None),
    "onnx_nchw_int8": ("onnx", "int8", {}, "nchw", "float32", None),
    "onnx_nhwc_fp32": ("onnx", "fp32", {"layout": "nhwc"}, "nhwc", "float32", None),
    "onnx_nhwc_fp16_native_io": ("onnx", "fp16", {"layout": "nhwc", "native_io": True}, "nhwc", "float16", None),
    "onnx_nhwc_int8": ("onnx", "int8", {"layout": "nhwc"}, "nhwc", "float32", None),
    "tflite_default_256": ("tflite", "fp32", {}, "nhwc", "float32", (256, 256)),
    "tflite_nhwc_fp16": ("tflite", "fp16", {"input_size": "32x48"}, "nhwc", "float32", (32, 48)),
    "tflite_nhwc_int8": ("tflite", "int8", {"input_size": "32x48"}, "nhwc", "float32", (32, 48)),
    "tflite_nchw_int8_native_io": ("tflite", "int8", {"input_size": "32x48", "layout": "nchw", "native_io": True},
                                   "nchw", "int8", (32, 48)),
    "coreml_nhwc_fp16_native_io": ("coreml", "fp16", {"layout": "nhwc", "native_io": True, "shapes": "40x56,48x40"},
                                   "nhwc", "float16", None),
}
BENCHED = [k for k in VARIANTS if not k.startswith("coreml")]  # bench times onnxruntime and LiteRT only
RUNTIME = {"onnx": "onnxruntime", "tflite": "litert", "coreml": "mil"}
RUNNER = {"onnx": OrtRunner, "tflite": LiteRTRunner, "coreml": MILRunner}
# least PSNR (dB, RGB, peak 1) of a runner's output against the PyTorch student's; measured: fp32 ~150,
# fp16 ~77, int8 ~47; a wrong layout or an unscaled int8 tensor gives < 20
MIN_PSNR = {"fp32": 100.0, "fp16": 60.0, "int8": 35.0}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _lr(h: int, w: int) -> torch.Tensor:
    """A real LR photo crop (1, 3, h, w), replicate-padded where the photo is smaller: int8 ranges are
    calibrated on photos, not on noise."""
    crop = load_eval_set(2, max_images=1)[0].lr[:, 10 : 10 + h, 20 : 20 + w].unsqueeze(0)
    pad_h, pad_w = h - crop.shape[-2], w - crop.shape[-1]
    return F.pad(crop, (0, pad_w, 0, pad_h), mode="replicate").contiguous() if pad_h or pad_w else crop.contiguous()


@pytest.fixture(scope="module")
def student(export_run_dir):
    return load_student(export_run_dir / "stage_02.pt")[0]


@pytest.fixture(scope="module")
def variant(exported):
    """variant(name) -> (export.json entry, VARIANTS row); the file is exported once per session."""
    def get(name: str):
        target, precision, opts, *_ = VARIANTS[name]
        return exported(target, precision, **opts), VARIANTS[name]

    return get


@pytest.fixture(scope="module")
def eval_dir(tmp_path_factory) -> Path:
    return make_tiny_eval(tmp_path_factory.mktemp("eval"), n=2, size=64)


# ---------------------------------------------------------------- the runner itself


@pytest.mark.parametrize("name", list(VARIANTS))
def test_runner_handles_layout_io_and_size(variant, student, name):
    entry, (target, precision, _, layout, io_dtype, fixed) = variant(name)
    runner = open_runner(entry["path"])
    assert isinstance(runner, RUNNER[target]) and runner.runtime == RUNTIME[target]
    assert (runner.layout, runner.io_dtype, runner.input_hw) == (layout, io_dtype, fixed)
    assert entry["io_dtype"] == io_dtype and entry["layout"] == layout
    # export verification opened the file through the same runner, and it passed within its tolerance
    v = entry["verification"]
    assert entry["verified"] and v["runtime"] == runner.label
    assert v["tolerance_db"] == TOLERANCE_DB[precision] and abs(v["delta_psnr_y"]) <= v["tolerance_db"]
    x = _lr(*(fixed or runner.tile_hw or (20, 28)))  # h != w, so a transposed layout cannot pass by symmetry
    got = runner(x.numpy())
    with torch.no_grad():
        want = student(x).clamp(0, 1).numpy()
    assert got.dtype == np.float32 and got.shape == want.shape
    assert _psnr(got, want) >= MIN_PSNR[precision]
    if fixed:
        with pytest.raises(SRShrinkError, match=f"takes {fixed[0]}x{fixed[1]} inputs only"):
            runner(_lr(20, 28).numpy())
    if target == "coreml":  # enumerated sizes, read in the NHWC order of the package's shapes
        assert runner.input_sizes == ((40, 56), (48, 40)) and runner.tile_hw == (40, 56)
        assert runner(_lr(48, 40).numpy()).shape == (1, 3, 96, 80)
        with pytest.raises(SRShrinkError, match="only the sizes it enumerates"):
            runner(_lr(56, 40).numpy())


def test_a_wrong_layout_is_caught(variant, student):
    """Negative control: the checks above fail when a runner feeds an NHWC graph as NCHW."""
    entry, _ = variant("tflite_nhwc_fp16")
    runner = open_runner(entry["path"])
    x = _lr(32, 48)
    runner.layout, runner.input_hw = "nchw", None  # what a layout-blind runner does with (1, 32, 48, 3)
    with pytest.raises(Exception):  # noqa: B017 - LiteRT rejects the shape, whatever it calls the error
        got = runner(x.numpy())
        assert _psnr(got, student(x).clamp(0, 1).detach().numpy()) >= MIN_PSNR["fp16"]


def test_layout_without_metadata_comes_from_the_input_shape(variant, student, tmp_path):
    entry, _ = variant("onnx_nhwc_fp32")
    proto = onnx.load(entry["path"])
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    runner = open_runner(tmp_path / "bare.onnx")
    assert runner.layout == "nhwc" and runner.input_hw is None
    x = _lr(20, 28)
    assert _psnr(runner(x.numpy()), student(x).clamp(0, 1).detach().numpy()) >= MIN_PSNR["fp32"]


def test_tflite_files_carry_their_metadata(variant):
    entry, _ = variant("tflite_nchw_int8_native_io")
    meta = tflite_metadata(entry["path"])
    assert meta["layout"] == "nchw" and meta["scale"] == 2 and meta["stage"] == 2 and meta["precision"] == "int8"


def test_open_runner_errors_are_one_line(variant, tmp_path, monkeypatch):
    with pytest.raises(SRShrinkError, match="no such model file"):
        open_runner(tmp_path / "absent.mlpackage")
    (tmp_path / "model.pt2").write_bytes(b"x")
    with pytest.raises(SRShrinkError, match=r"unknown model type '\.pt2'"):
        open_runner(tmp_path / "model.pt2")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(SRShrinkError, match="onnxruntime cannot load it"):
        open_runner(tmp_path / "junk.onnx")
    entry, _ = variant("onnx_nchw_fp32")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # "import onnxruntime" now fails
    with pytest.raises(SRShrinkError) as err:
        open_runner(entry["path"])
    assert "running .onnx files needs" in str(err.value) and "pip install 'sr-shrink[onnx]'" in str(err.value)


# ---------------------------------------------------------------- upscale


@pytest.mark.parametrize("name", list(VARIANTS))
def test_upscale_runs_every_variant(variant, student, name):
    entry, (_, precision, _, _, _, fixed) = variant(name)
    up = load_upscaler(entry["path"], scale=2)
    tile = fixed or ((40, 56) if name.startswith("coreml") else None)  # an enumerated package: its default size
    assert up.scale == 2 and up.input_hw == tile and up.radius >= 6  # 2 blocks: 6 px receptive radius
    for h, w in [(45, 70), (20, 26)]:  # larger and smaller than a fixed tile: tiled, or padded per axis
        lr = _lr(h, w)
        with torch.no_grad():
            want = student(lr).clamp(0, 1).numpy()
        got = up.apply(lr, tile=24).numpy()  # free-size models are tiled too (fixed ones use their own size)
        assert got.shape == want.shape and _psnr(got, want) >= MIN_PSNR[precision], (h, w)


@pytest.mark.parametrize("name", ["onnx_nhwc_fp32", "tflite_default_256", "coreml_nhwc_fp16_native_io"])
def test_cli_upscale_matches_the_checkpoint(variant, export_run_dir, student, tmp_path, name):
    """The reported bug: ``export --layout nhwc`` then ``upscale`` on that .onnx crashed in ONNX Runtime."""
    entry, (_, precision, *_) = variant(name)
    pic = (_lr(50, 61)[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pic).save(tmp_path / "photo.png")
    res = CliRunner().invoke(main, ["upscale", entry["path"], str(tmp_path / "photo.png"), "-o", str(tmp_path / "o")])
    assert res.exit_code == 0, res.output
    got = np.asarray(Image.open(tmp_path / "o" / "photo_x2.png")).astype(int)
    with torch.no_grad():
        sr = student(torch.from_numpy(pic).permute(2, 0, 1).float().div(255).unsqueeze(0))[0]
    want = sr.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy().astype(int)
    assert got.shape == want.shape == (100, 122, 3)
    assert np.abs(got - want).max() <= (1 if precision == "fp32" else 2)


# ---------------------------------------------------------------- bench


@pytest.mark.parametrize("name", BENCHED)
def test_bench_runs_every_variant(variant, export_run_dir, eval_dir, tmp_path, name):
    entry, (target, precision, _, layout, io_dtype, fixed) = variant(name)
    run = tmp_path / "run"
    (run / "exports").mkdir(parents=True)
    for f in ("stage_02.pt", "run.json"):
        shutil.copy(export_run_dir / f, run / f)
    src = Path(entry["path"])
    shutil.copy(src, run / "exports" / f"stage_02_{precision}{src.suffix}")  # where bench looks for the file
    cfg = BenchConfig(runtimes=(RUNTIME[target],), precisions=(precision,), stages=(2,),
                      input_size=fixed or (32, 32), eval_dir=str(eval_dir), repeats=1, warmup=0, rounds=1)
    result = run_bench(run, cfg)
    rows = {r["runtime"]: r for r in result["rows"]}
    assert set(rows) == {"torch", RUNTIME[target]}, result["notes"]
    row, ref = rows[RUNTIME[target]], rows["torch"]
    assert row["path"] == str(run / "exports" / f"stage_02_{precision}{src.suffix}") and not row["exported_now"]
    assert (row["layout"], row["io_dtype"], row["precision"]) == (layout, io_dtype, precision)
    assert abs(row["psnr_y"] - ref["psnr_y"]) <= TOLERANCE_DB[precision] + 1e-4
    assert row["latency_ms_median"] > 0 and len(row["latency_ms_samples"]) == 1
