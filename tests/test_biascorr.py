"""Bias correction of int8 weight rounding (sr_shrink.export.biascorr): the float weights stay, the biases take
out the mean error of the rounded weights, and exports record it."""

from __future__ import annotations

import torch
from conftest import make_tiny_run

from sr_shrink.export import export_run
from sr_shrink.export.biascorr import correct_bias, quantized_convs
from sr_shrink.export.qat import fake_quant_weight
from sr_shrink.models.student import load_student

FAST = {"eval_images": 2, "calib_samples": 4, "input_size": "48x48"}


def _rounded(student, qmax: int, ends: bool):
    """Return a copy of ``student`` whose quantized convs compute with rounded weights (the int8 file's weights)."""
    import copy

    q = copy.deepcopy(student)
    with torch.no_grad():
        for c in quantized_convs(q, ends):
            c.weight.copy_(fake_quant_weight(c.weight, qmax))
    return q


def test_correct_bias_removes_the_mean_error_of_rounded_weights(tmp_path):
    student, _ = load_student(make_tiny_run(tmp_path / "r", n_stages=2) / "stage_02.pt")
    calib = [torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(i)) for i in range(8)]
    x = torch.cat(calib)
    qmax = 3  # coarse on purpose: rounding shifts every channel's mean
    fixed, rec = correct_bias(student, calib, qmax=qmax, ends=True)
    assert rec["convs"] == 2 + 2 * student.n_blocks and rec["max_bias_shift"] > 0
    for a, b in zip(quantized_convs(fixed, True), quantized_convs(student, True), strict=True):
        assert torch.equal(a.weight, b.weight)  # the exporter rounds exactly the same weights
    with torch.no_grad():
        ref = student(x)
        plain = (_rounded(student, qmax, True)(x) - ref).mean(dim=(0, 2, 3)).abs().max()
        corrected = (_rounded(fixed, qmax, True)(x) - ref).mean(dim=(0, 2, 3)).abs().max()
    assert plain > 1e-3 and corrected < plain / 3, (plain, corrected)
    # ends=False (the ONNX int8 scheme): head and tail are float there, so their biases stay
    body_only, rec = correct_bias(student, calib, qmax=qmax, ends=False)
    assert rec["convs"] == 2 * student.n_blocks
    assert torch.equal(body_only.head.bias, student.head.bias) and torch.equal(body_only.tail.bias, student.tail.bias)


def test_bias_corrected_exports_record_it_and_leave_fp32_alone(tmp_path):
    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    e = export_run(run, "onnx", precision="int8", bias_correction=True, out=tmp_path / "a", **FAST)[0]
    rec = e["bias_correction"]
    assert rec["weights"] == "per channel, [-64, 64]" and rec["convs"] == 2  # 7-bit body convs only
    assert e["verified"]
    w = export_run(run, "tflite", precision="w8a16", bias_correction=True, out=tmp_path / "b", **FAST)[0]
    assert w["bias_correction"]["weights"] == "per channel, [-127, 127]" and w["bias_correction"]["convs"] == 4
    f = export_run(run, "onnx", precision="fp32", bias_correction=True, out=tmp_path / "c", **FAST)[0]
    assert "bias_correction" not in f and f["verification"]["delta_psnr_y"] == 0


def test_cli_export_takes_bias_correction_and_equalize(tmp_path):
    import json

    from click.testing import CliRunner

    from sr_shrink.cli import main

    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    out = tmp_path / "x"
    res = CliRunner().invoke(main, ["export", str(run), "--target", "onnx", "--precision", "int8", "--out", str(out),
                                    "--calib-samples", "2", "--bias-correction", "--equalize"])
    assert res.exit_code == 0, res.output
    entry = json.loads((out / "export.json").read_text())["exports"][0]
    assert entry["bias_correction"]["convs"] == 2 and "stream_gain_spread" in entry["equalization"]
    res = CliRunner().invoke(main, ["export", str(run), "--target", "onnx", "--precision", "int8", "--out",
                                    str(tmp_path / "y"), "--calib-samples", "2"])
    entry = json.loads((tmp_path / "y" / "export.json").read_text())["exports"][0]
    assert res.exit_code == 0 and "bias_correction" not in entry and "equalization" not in entry
