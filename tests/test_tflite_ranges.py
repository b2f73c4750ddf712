"""TFLite int8 ``--calib-method percentile``: the histogram percentile rule, the ranges in the real file, the
export.json record, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_run

from sr_shrink.cli import main
from sr_shrink.errors import SRShrinkError
from sr_shrink.export import export_run
from sr_shrink.export.tflite import percentile_range

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
