"""Range equalization before int8 export (sr_shrink.export.equalize): the same function, even ranges, and an
int8 file that recovers what an uneven stream cost."""

from __future__ import annotations

import numpy as np
import onnx
import torch
from conftest import make_tiny_run
from export_helpers import widen_channel

from sr_shrink.export import export_run
from sr_shrink.export.equalize import channel_ranges, equalize
from sr_shrink.models.student import load_student

FAST = {"eval_images": 2, "calib_samples": 4, "input_size": "48x48"}


def test_equalize_keeps_the_function_and_evens_the_stream(tmp_path):
    student, _ = load_student(widen_channel(make_tiny_run(tmp_path / "r", n_stages=2), 8.0))
    calib = [torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    eq, rec = equalize(student, calib)
    x = torch.rand(1, 3, 30, 20)
    with torch.no_grad():
        assert torch.allclose(eq(x), student(x), atol=1e-5)
    before, _ = channel_ranges(student, calib)
    after, hidden = channel_ranges(eq, calib)
    assert float(before.max() / before.min()) > 4  # the widened channel: the control that makes this test bite
    assert float(after.max() / after.min()) < 1.05
    live = [h[h > h.max() * rec["floor"]] for h in hidden]  # dead ReLU channels are held at the floor
    assert all(float(h.max() / h.min()) < 1.05 for h in live)
    assert rec["stream_gain_spread"] > 4


def test_equalized_int8_export_recovers_the_uneven_stream(tmp_path):
    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    widen_channel(run, 4.0)
    # equalization alone: GPTQ (TFLite int8's default) would absorb part of the widened channel's cost too
    plain = export_run(run, "tflite", precision="int8", gptq=False, out=tmp_path / "a", **FAST)[0]
    eq = export_run(run, "tflite", precision="int8", equalize=True, gptq=False, out=tmp_path / "b", **FAST)[0]
    assert "equalization" not in plain and eq["equalization"]["stream_gain_spread"] > 4
    p, q = plain["verification"], eq["verification"]
    assert p["delta_psnr_y"] < -0.05  # the widened channel costs int8 measurable Y-PSNR
    assert q["delta_psnr_y"] > p["delta_psnr_y"] + 0.03 and q["psnr_vs_torch"] > p["psnr_vs_torch"] + 1
    assert eq["verified"]


def test_equalize_leaves_float_exports_alone(tmp_path):
    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    a = export_run(run, "onnx", precision="fp32", out=tmp_path / "a", **FAST)[0]
    b = export_run(run, "onnx", precision="fp32", equalize=True, out=tmp_path / "b", **FAST)[0]
    assert "equalization" not in b

    def weights(e):
        return [onnx.numpy_helper.to_array(t) for t in onnx.load(e["path"]).graph.initializer]

    assert all(np.array_equal(x, y) for x, y in zip(weights(a), weights(b), strict=True))
