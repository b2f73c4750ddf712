"""``sr-shrink info`` on exported files: what the file itself says, what its export.json adds, and one error line."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from click.testing import CliRunner
from conftest import one_error_line

from sr_shrink.cli import main
from sr_shrink.export.describe import describe_export, info_rows

# (target, precision, options, the input sizes the file takes)
FILES = {"onnx": ("onnx", "fp32", {}, None),
         "tflite_int8": ("tflite", "int8", {"input_size": "32x48"}, [(32, 48)]),
         "coreml": ("coreml", "fp16", {"layout": "nhwc", "native_io": True, "shapes": "40x56,48x40"},
                    [(40, 56), (48, 40)])}


@pytest.mark.parametrize("name", list(FILES))
def test_info_reads_the_file_and_its_export_entry(exported, name):
    target, precision, opts, sizes = FILES[name]
    entry = exported(target, precision, **opts)
    info = describe_export(entry["path"])
    assert (info.target, info.scale, info.scale_from) == (target, 2, "metadata")
    assert str(info.metadata["stage"]) == "2" and info.metadata["precision"] == entry["tag"]
    assert info.input_sizes == sizes and info.layout == entry["layout"] and info.io_dtype == entry["io_dtype"]
    assert info.ops == entry["ops"] and info.entry is not None and info.entry["file"] == entry["file"]
    rows = dict(info_rows(info))
    assert rows["precision"] == entry["tag"] and rows["student"].startswith("stage 2 (2 blocks, 8 ch")
    assert rows["verification"].startswith("verified: ") and "export.json" not in rows
    assert ("GPU delegate" in rows) == (target == "tflite")

    result = CliRunner().invoke(main, ["info", entry["path"], "--json"])
    assert result.exit_code == 0, result.output
    d = json.loads(result.output)
    assert d["scale"] == 2 and d["entry"]["verification"]["verified"] is True
    result = CliRunner().invoke(main, ["info", entry["path"], "--scale", "2"])
    assert result.exit_code == 0 and "verified: Y-PSNR" in result.output, result.output


def test_info_on_a_copy_without_its_index(exported, tmp_path):
    entry = exported("onnx", "fp32")
    copy = tmp_path / "alone.onnx"
    shutil.copy(entry["path"], copy)
    info = describe_export(copy)
    assert info.entry is None and info.scale == 2  # the file's own metadata still gives scale, stage, precision
    rows = dict(info_rows(info))
    assert "verification" not in rows and rows["export.json"].startswith("none beside it")


class _X3(torch.nn.Module):
    """A network another tool exported: x3 by a conv and a pixel shuffle, no sr-shrink metadata."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 27, 3, padding=1)

    def forward(self, x):
        return torch.nn.functional.pixel_shuffle(self.conv(x), 3)


def test_info_on_a_foreign_onnx_file_finds_the_scale_by_running_it(tmp_path):
    path = tmp_path / "other.onnx"
    torch.onnx.export(_X3().eval(), (torch.rand(1, 3, 16, 16),), str(path), input_names=["x"],
                      dynamic_axes={"x": {2: "h", 3: "w"}}, dynamo=False)
    info = describe_export(path)
    assert (info.scale, info.scale_from, info.metadata) == (3, "probe", {})
    rows = dict(info_rows(info))
    assert rows["made by"].startswith("not sr-shrink") and rows["scale"].startswith("x3 (found by running it)")
    assert "student" not in rows and rows["input"].startswith("float32 NCHW, any height and width")


def test_info_errors_on_exported_files_are_one_line(exported, tmp_path):
    path = exported("onnx", "fp32")["path"]
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not a protobuf at all")
    for args, says in ((["info", str(tmp_path / "missing.onnx")], "no such model file"),
                       (["info", str(broken)], "cannot load it"),
                       (["info", path, "--scale", "4"], "upscales x2, not x4"),
                       (["info", path, "--value-range", "255"], "--value-range describes a teacher file")):
        line = one_error_line(CliRunner().invoke(main, args))
        assert line.startswith("error: ") and says in line, line
