"""TFLite int8 ``--calib-method percentile``: the histogram percentile rule, the ranges in the real file, the
export.json record, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_run

import sr_shrink.export.tflite as tflite_export
from sr_shrink.cli import main
from sr_shrink.errors import SRShrinkError
from sr_shrink.export import export_run
from sr_shrink.export.tflite import percentile_range, pixel_grid_qparams

FAST = {"eval_images": 2, "calib_samples": 4, "input_size": "48x48"}


def test_percentile_range_cuts_each_tail_at_bin_edges():
    hist = torch.ones(1000)  # 1000 values spread evenly over [-1, 3]: bins 0.004 wide
    lo, hi = percentile_range(hist, -1.0, 3.0, 99.0)  # 5 values cut at each end
    assert lo == pytest.approx(-0.98) and hi == pytest.approx(2.98)
    assert percentile_range(hist, -1.0, 3.0, 100.0) == pytest.approx((-1.0, 3.0))  # nothing cut
    spike = torch.zeros(1000)
    spike[:990] = 1.0
    spike[999] = 0.01  # an outlier bin holding 0.001 % of the values
    assert percentile_range(spike, 0.5, 1.5, 99.99)[1] == pytest.approx(0.5 + 990 * 0.001)  # cut off...
    assert percentile_range(spike, 0.5, 1.5, 100.0)[1] == pytest.approx(1.5)  # ...but kept at 100
    assert percentile_range(spike, 0.5, 1.5, 99.99)[0] == 0.0  # widened to hold 0
    assert percentile_range(torch.zeros(8), -2.0, 1.0, 99.99) == (-2.0, 1.0)  # an empty histogram: as given


def test_tflite_int8_percentile_ranges_are_the_files(tmp_path):
    from ai_edge_litert.interpreter import Interpreter

    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    pct = export_run(run, "tflite", precision="int8", calib_method="percentile", out=tmp_path / "p", **FAST)[0]
    hist = export_run(run, "tflite", precision="int8", out=tmp_path / "h", **FAST)[0]
    q = pct["quantization"]
    assert pct["verified"] and "99.99 percentile" in q["activations"]
    assert "histogram" in hist["quantization"]["activations"]
    assert "activation_ranges" not in hist["quantization"] and len(q["activation_ranges"]) >= 4

    def scales(path: str) -> list[float]:
        details = Interpreter(model_path=path).get_tensor_details()
        return [float(d["quantization_parameters"]["scales"][0]) for d in details
                if d["dtype"] == np.int8 and len(d["quantization_parameters"]["scales"]) == 1]

    in_file = scales(pct["path"])
    for name, (lo, hi) in q["activation_ranges"].items():  # every recorded range is a scale of the file
        assert any(abs(s - (hi - lo) / 255) <= 1e-4 * s + 1e-7 for s in in_file), name
    assert sorted(in_file) != sorted(scales(hist["path"]))  # the negative control: other ranges than the observer's


def test_pixel_grid_qparams_hold_the_range_at_the_pixel_step():
    for lo, hi in ((-0.43, 0.44), (0.0, 1.0), (-1.0, 0.0), (0.1, 0.5), (-0.5, 0.498)):
        scale, zero = pixel_grid_qparams(lo, hi)
        assert scale == 1 / 255 and -128 <= zero <= 127
        assert (-128 - zero) * scale <= min(lo, 0.0) + 1e-9 and (127 - zero) * scale >= max(hi, 0.0) - 1e-9
    assert pixel_grid_qparams(0.0, 1.0) == (1 / 255, -128)  # [0, 1]: the 8-bit image levels themselves
    assert pixel_grid_qparams(-0.2, 0.9) is None and pixel_grid_qparams(0.0, 1.01) is None  # wider than 255 steps


def _last_add_and_input_scales(path: str) -> tuple[list[float], float]:
    """Return the scales of the last ADD's two int8 inputs and of the int8 model input of a .tflite file."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=path)
    tensors = {d["index"]: d for d in interp.get_tensor_details()}
    ops = interp._get_ops_details()
    add = [o for o in ops if o["op_name"] == "ADD"][-1]
    first_conv = next(o for o in ops if o["op_name"] == "CONV_2D")
    return [float(tensors[i]["quantization"][0]) for i in add["inputs"]], \
        float(tensors[first_conv["inputs"][0]]["quantization"][0])


def test_tflite_int8_sums_the_tail_and_anchor_on_the_pixel_grid(tmp_path, monkeypatch):
    """The last Add's terms (tail conv, anchor conv) and the input are at the 8-bit pixel step in the file, so
    the Add's output (pinned to [0, 1] at 1/255) is exact; without it (the negative control) both terms keep
    their observers' own scales."""
    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    on = export_run(run, "tflite", precision="int8", native_io=True, out=tmp_path / "on", **FAST)[0]
    grid = on["quantization"]["pixel_grid"]
    assert grid["input"] == grid["anchor"] == [0.0, 1.0] and len(grid["tail"]) == 2 and on["verified"]
    terms, inp = _last_add_and_input_scales(on["path"])
    assert terms == [pytest.approx(1 / 255, rel=1e-6)] * 2 and inp == pytest.approx(1 / 255, rel=1e-6)
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=on["path"])  # --native-io: int8 pixel values minus 128, in and out
    for d in (interp.get_input_details()[0], interp.get_output_details()[0]):
        assert d["dtype"] == np.int8 and d["quantization"] == (pytest.approx(1 / 255, rel=1e-6), -128)
    monkeypatch.setattr(tflite_export, "PIXEL_GRID", False)
    off = export_run(run, "tflite", precision="int8", out=tmp_path / "off", **FAST)[0]
    assert "pixel_grid" not in off["quantization"]
    terms, inp = _last_add_and_input_scales(off["path"])
    assert all(abs(t * 255 - 1) > 1e-3 for t in terms)  # the observers' own scales, even the anchor's copy of x


def test_calib_method_errors_are_one_line(tmp_path):
    run = make_tiny_run(tmp_path / "r", n_stages=1)
    res = CliRunner().invoke(main, ["export", str(run), "--target", "onnx", "--precision", "int8",
                                    "--calib-method", "percentile"])
    assert res.exit_code == 2 and res.output.startswith("error: ") and "--target tflite" in res.output
    assert res.output.strip().count("\n") == 0
    with pytest.raises(SRShrinkError, match="--calib-method is for"):
        export_run(run, "tflite", precision="fp16", calib_method="percentile")
    with pytest.raises(SRShrinkError, match="unknown calib-method"):
        export_run(run, "tflite", precision="int8", calib_method="entropy")
