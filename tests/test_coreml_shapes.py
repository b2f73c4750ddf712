"""Core ML --shapes: EnumeratedShapes input (the default set, or the listed sizes) verified at every size, or
``any`` size (RangeDim); metadata and description."""

from __future__ import annotations

import numpy as np
import pytest

from sr_shrink.errors import SRShrinkError
from sr_shrink.export import export_run
from sr_shrink.export.coreml import images_per_shape
from sr_shrink.export.options import COREML_SHAPES, ExportConfig
from sr_shrink.runtimes import open_runner

FAST = {"eval_images": 2}


def test_enumerated_shapes_are_written_and_verified_at_each(export_run_dir):
    import coremltools as ct

    e = export_run(export_run_dir, "coreml", stage=2, precision="fp32", out=export_run_dir / "ex_shapes",
                   shapes="48x64,40x40", **FAST)[0]
    assert e["inputs"][0]["enumerated"] == [[1, 3, 48, 64], [1, 3, 40, 40]] and "ranges" not in e["inputs"][0]
    assert e["shapes"] == [[48, 64], [40, 40]] and e["shape_policy"].startswith("enumerated LR sizes 48x64, 40x40")
    v = e["verification"]
    assert set(v["shapes"]) == {"48x64", "40x40"} and all(s["verified"] for s in v["shapes"].values())
    assert v["verified"] and e["verified"] and "enumerated shapes" in v["inputs"]
    assert v["delta_psnr_y"] == v["shapes"]["40x40"]["delta_psnr_y"]  # all pass: the smallest size's (every image)
    assert v["worst_delta_psnr_y"] == min(s["delta_psnr_y"] for s in v["shapes"].values())
    assert {k: s["images"] for k, s in v["shapes"].items()} == {"48x64": 1, "40x40": 2}  # about equal pixels
    spec = ct.models.MLModel(e["path"], skip_model_load=True).get_spec()
    shapes = spec.description.input[0].type.multiArrayType.enumeratedShapes.shapes
    assert [list(s.shape) for s in shapes] == [[1, 3, 48, 64], [1, 3, 40, 40]]
    meta = spec.description.metadata
    assert meta.userDefined["teacher"] == "tiny" and meta.userDefined["producer"].startswith("sr-shrink ")
    assert meta.userDefined["scale"] == "2" and meta.userDefined["stage"] == "2"
    assert "x2" in meta.shortDescription and "stage 2" in meta.shortDescription
    run = open_runner(e["path"])
    x = np.random.default_rng(0).random((1, 3, 40, 40), dtype=np.float32)
    assert run(x).shape == (1, 3, 80, 80)


def test_a_shape_that_fails_fails_the_export(export_run_dir, monkeypatch):
    """verified needs every enumerated size: a runner wrong at one size only is caught there."""
    import dataclasses

    from sr_shrink.export import targets

    real = targets.TARGETS["coreml"].verify_shapes

    def one_bad_size(runner, *args):
        def run(x):
            y = runner(x)
            return y * 0.9 if x.shape[-1] == 40 else y
        return real(run, *args)

    monkeypatch.setitem(targets.TARGETS, "coreml", dataclasses.replace(targets.TARGETS["coreml"],
                                                                     verify_shapes=one_bad_size))
    e = export_run(export_run_dir, "coreml", stage=1, precision="fp32", out=export_run_dir / "ex_shapes_bad",
                   shapes="48x64,40x40", **FAST)[0]
    v = e["verification"]
    assert not e["verified"] and v["shapes"]["48x64"]["verified"] and not v["shapes"]["40x40"]["verified"]
    assert "outside the fp32 tolerance" in v["reason"]


def test_images_per_shape_spends_about_equal_pixels():
    counts = images_per_shape(10, COREML_SHAPES)
    assert counts == {(256, 256): 10, (512, 512): 2, (360, 640): 3, (540, 960): 1, (720, 1280): 1}
    assert images_per_shape(2, ((64, 64), (32, 32))) == {(64, 64): 1, (32, 32): 2}
    assert images_per_shape(3, ((8, 8), (9, 9))) == {(8, 8): 3, (9, 9): 2}
    # above 720x1280 even the smallest size gets fewer images: each is padded to the size (a 2048x2048 LR fp16
    # package verified ten 96x96 images padded to it, about 1.5 min each)
    assert images_per_shape(10, ((2048, 2048),)) == {(2048, 2048): 2}
    assert images_per_shape(10, ((1024, 1024), (2048, 2048))) == {(1024, 1024): 9, (2048, 2048): 2}
    assert images_per_shape(10, ((720, 1280),)) == {(720, 1280): 10}  # the README's largest recipe size
    assert images_per_shape(10, ((256, 256),)) == {(256, 256): 10}


def test_a_large_fixed_size_verifies_fewer_images(tmp_path, monkeypatch):
    from conftest import make_tiny_run

    from sr_shrink.export import export_run, verify

    run = make_tiny_run(tmp_path / "r", n_stages=1)
    small = export_run(run, "onnx", precision="fp32", input_size="32x32", out=tmp_path / "s", eval_images=4)
    assert small[0]["verification"]["images"] == 4 and small[0]["verified"] and len(verify._REFS) >= 4
    monkeypatch.setattr(verify, "_REFS_MAX_BYTES", 1)  # the cache of student outputs keeps only the newest one
    large = export_run(run, "onnx", precision="fp32", input_size="1024x1536", out=tmp_path / "l", eval_images=4)
    assert large[0]["verification"]["images"] == 2 and large[0]["verified"]
    assert len(verify._REFS) == 1 and next(iter(verify._REFS.values()))[0].shape[-2:] == (2048, 3072)


def test_shapes_option_checks():
    assert ExportConfig("coreml", shapes="default").shapes == COREML_SHAPES
    default = ExportConfig("coreml")  # the Neural Engine runs an enumerated input at every size: the default
    assert default.shapes == COREML_SHAPES and not default.dynamic
    anysize = ExportConfig("coreml", shapes="any")
    assert anysize.shapes is None and anysize.input_size is None and anysize.dynamic
    fixed = ExportConfig("coreml", input_size="64x64")
    assert fixed.shapes is None and fixed.input_size == (64, 64)
    assert ExportConfig("onnx").shapes is None and ExportConfig("onnx").dynamic
    one = ExportConfig("coreml", shapes="96x128")
    assert one.shapes is None and one.input_size == (96, 128)
    assert ExportConfig("coreml", shapes="256x256, 540x960,256x256").shapes == ((256, 256), (540, 960))
    with pytest.raises(SRShrinkError, match="Core ML only"):
        ExportConfig("onnx", shapes="256x256")
    with pytest.raises(SRShrinkError, match="not both"):
        ExportConfig("coreml", shapes="256x256", input_size="64x64")
    with pytest.raises(SRShrinkError, match="HxW"):
        ExportConfig("coreml", shapes="big")
    with pytest.raises(SRShrinkError, match=r"--shapes 4096x4096: height and width must be between 8 and 2048"):
        ExportConfig("coreml", shapes="4096x4096,256x256")  # past Core ML's range (the export died with SIGSEGV)
    with pytest.raises(SRShrinkError, match=r"--input-size 4096x4096: .* between 8 and 2048"):
        ExportConfig("coreml", input_size="4096x4096")
    assert ExportConfig("onnx", input_size="4096x4096").input_size == (4096, 4096)  # each target's own range


def test_image_io_folds_the_scale_into_the_first_conv(export_run_dir):
    """--io image: RGB image in and out, no mul op for 1/255 (it is in the head conv), verified at 8-bit I/O."""
    import coremltools as ct

    e = export_run(export_run_dir, "coreml", stage=2, out=export_run_dir / "ex_image", io="image",
                   shapes="48x64", **FAST)[0]
    assert e["inputs"][0]["dtype"].startswith("image") and e["outputs"][0]["dtype"].startswith("image")
    assert "mul" not in e["ops"] and "real_div" not in e["ops"] and e["ops"]["conv"] >= 3
    assert e["verified"] and abs(e["verification"]["delta_psnr_y"]) <= 0.01
    spec = ct.models.MLModel(e["path"], skip_model_load=True).get_spec()
    img = spec.description.input[0].type.imageType
    assert img.colorSpace == ct.proto.FeatureTypes_pb2.ImageFeatureType.RGB
    assert spec.description.metadata.userDefined["io"] == "image"
    run = open_runner(e["path"])
    x = np.random.default_rng(1).random((1, 3, 48, 64), dtype=np.float32)
    y = run(x)
    assert y.shape == (1, 3, 96, 128) and np.allclose(y * 255, np.round(y * 255), atol=1e-3)  # 8-bit output
    with pytest.raises(SRShrinkError, match="--io image is for Core ML"):
        ExportConfig("tflite", io="image")
    with pytest.raises(SRShrinkError, match="--io image is for Core ML"):
        ExportConfig("coreml", io="image", layout="nhwc")


def test_image_io_package_enumerates_its_sizes(export_run_dir):
    """An ImageType input lists its sizes as enumeratedSizes (not enumeratedShapes); the runner reads those."""
    e = export_run(export_run_dir, "coreml", stage=1, out=export_run_dir / "ex_image_enum", io="image",
                   shapes="48x64,40x40", **FAST)[0]
    assert e["verified"] and e["inputs"][0]["enumerated"] == [[1, 3, 48, 64], [1, 3, 40, 40]]
    run = open_runner(e["path"])
    assert run.image_io and run.input_sizes == ((48, 64), (40, 40)) and run.tile_hw == (48, 64)
    with pytest.raises(SRShrinkError, match="only the sizes it enumerates"):
        run(np.zeros((1, 3, 64, 48), dtype=np.float32))


def test_export_says_which_sizes_a_package_takes(export_run_dir, tmp_path):
    """The CLI names the sizes of an enumerated package, and warns that a RangeDim one (--shapes any) runs on the
    Neural Engine only at its 64x64 default."""
    from click.testing import CliRunner

    from sr_shrink.cli import main

    base = ["export", str(export_run_dir), "--target", "coreml", "--stage", "1", "--precision", "fp32"]
    res = CliRunner().invoke(main, base + ["--shapes", "48x64,40x40", "--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    assert "stage_01_fp32.mlpackage: takes LR 48x64, 40x40 (EnumeratedShapes" in res.output
    res = CliRunner().invoke(main, base + ["--shapes", "any", "--out", str(tmp_path / "a")])
    assert res.exit_code == 0, res.output
    assert "takes any LR size 8..2048 (RangeDim); the Neural Engine runs it only at 64x64" in res.output
    assert "EnumeratedShapes" not in res.output
