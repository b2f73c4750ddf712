"""GPTQ weight rounding (sr_shrink.export.gptq): grid points the exporter keeps, a smaller output error than
rounding to nearest on the inputs it was fitted to, bias correction against the fp32 weights, and exports that
write exactly the chosen weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from conftest import make_tiny_run
from onnx import numpy_helper

import sr_shrink.export.pipeline as pipeline
from sr_shrink.export import export_run
from sr_shrink.export.biascorr import correct_bias
from sr_shrink.export.gptq import gptq_round, gptq_weights, input_moments
from sr_shrink.export.qat import fake_quant_weight, quantized_convs
from sr_shrink.models.student import load_student

FAST = {"eval_images": 2, "calib_samples": 4}


def _levels(w: torch.Tensor, qmax: int) -> torch.Tensor:
    scale = w.abs().amax(dim=(1, 2, 3), keepdim=True) / qmax
    return w / scale


@pytest.mark.parametrize("qmax", [7, 127])
def test_gptq_weights_are_grid_points_with_a_smaller_output_error(qmax):
    """On correlated inputs (neighbouring pixels of a smooth image), GPTQ's weights give the conv a smaller output
    error than rounding each weight to nearest; every weight is a grid point of the channel's own scale, and each
    channel keeps a weight at the top level (so the exporter's rounding derives the same scale)."""
    g = torch.Generator().manual_seed(0)
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    torch.nn.init.normal_(conv.weight, generator=g)
    x = F.avg_pool2d(torch.rand(8, 4, 40, 40, generator=g), 5, 1, 2)  # smooth: strongly correlated patches
    q, changed, kept = gptq_weights(conv.weight.detach(), input_moments(conv, [x]), qmax)
    nearest = fake_quant_weight(conv.weight.detach(), qmax)
    lv = _levels(q, qmax)
    assert torch.allclose(lv, lv.round(), atol=1e-4) and (lv.abs().amax(dim=(1, 2, 3)).round() == qmax).all()
    assert not torch.equal(q, nearest) and changed > 0 and kept < conv.out_channels
    with torch.no_grad():
        err_q = F.conv2d(x, q - conv.weight, padding=1).pow(2).mean()
        err_n = F.conv2d(x, nearest - conv.weight, padding=1).pow(2).mean()
    assert err_q < 0.8 * err_n, (err_q, err_n)


def test_gptq_round_then_bias_correction_against_the_fp32_weights(tmp_path):
    student, _ = load_student(make_tiny_run(tmp_path / "r", n_stages=2) / "stage_02.pt")
    calib = [torch.rand(1, 3, 24, 24, generator=torch.Generator().manual_seed(i)) for i in range(6)]
    rounded, rec = gptq_round(student, calib, qmax=127, ends=False)
    assert rec["convs"] == 2 * student.n_blocks and rec["inputs"] == 6
    assert torch.equal(rounded.head.weight, student.head.weight)  # ends=False: head and tail stay float
    for a, b in zip(quantized_convs(rounded, False), quantized_convs(student, False), strict=True):
        lv = _levels(a.weight, 127)
        assert torch.allclose(lv, lv.round(), atol=1e-4)  # already on the grid
        assert not torch.equal(a.weight, b.weight)
        assert torch.equal(a.bias, b.bias)  # GPTQ leaves the biases to bias correction
    _, none = correct_bias(rounded, calib, qmax=127, ends=False)  # negative control: no error against itself
    _, against_fp32 = correct_bias(rounded, calib, qmax=127, ends=False, reference=student)
    assert none["max_bias_shift"] < 1e-6 < against_fp32["max_bias_shift"]


def _spy_on_gptq(monkeypatch) -> dict:
    """Make the export pipeline's GPTQ keep the student it rounds; return the dict it goes in (``student``)."""
    chosen = {}

    def spy(student, calib, *args, **kw):
        chosen["student"], rec = gptq_round(student, calib, *args, **kw)
        return chosen["student"], rec

    monkeypatch.setattr(pipeline, "gptq_round", spy)
    return chosen


@pytest.mark.parametrize("precision", ["w8a16", "int8"])
def test_gptq_export_writes_the_chosen_weights(tmp_path, monkeypatch, precision):
    """--gptq: the file's int8 weights are exactly the GPTQ student's (the exporter's own rounding keeps them),
    not the nearest ones; export.json records it; a file with --no-gptq rounds to nearest."""
    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    chosen = _spy_on_gptq(monkeypatch)
    e = export_run(run, "onnx", precision=precision, gptq=True, out=tmp_path / "a", **FAST)[0]
    plain = export_run(run, "onnx", precision=precision, gptq=False, out=tmp_path / "b", **FAST)[0]
    assert e["gptq"]["convs"] == (4 if precision == "w8a16" else 2) and "gptq" not in plain and e["verified"]
    st = chosen["student"]
    qmax = 64 if precision == "int8" else 127  # ONNX int8's 7-bit weights by default
    want = {i: _levels(c.weight, qmax).round().to(torch.int8).numpy()
            for i, c in enumerate(quantized_convs(st, precision == "w8a16"))}

    def file_levels(path):
        return [numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer
                if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]

    got, base = file_levels(e["path"]), file_levels(plain["path"])
    assert len(got) == len(want)
    for (_, w), g in zip(sorted(want.items()), got, strict=True):
        assert np.array_equal(g, w)
    assert any(not np.array_equal(g, b) for g, b in zip(got, base, strict=True))


def test_coreml_int8_takes_calibration_inputs_for_gptq_and_writes_its_weights(tmp_path, monkeypatch):
    """Core ML int8 stores int8 weights only (fp16 compute): with --gptq it takes calibration inputs, and the
    package's int8 weights (constexpr_affine_dequantize) are exactly the GPTQ student's levels, coremltools'
    symmetric per-channel grid being the exporter's own; with neither --gptq nor --bias-correction it takes no
    calibration inputs and rounds to nearest (the negative control)."""
    from sr_shrink.mil_eval import load_program

    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    chosen = _spy_on_gptq(monkeypatch)
    opts = {**FAST, "shapes": "32x32"}
    e = export_run(run, "coreml", precision="int8", gptq=True, bias_correction=True, out=tmp_path / "a", **opts)[0]
    plain = export_run(run, "coreml", precision="int8", gptq=False, bias_correction=False, out=tmp_path / "b",
                       **opts)[0]
    assert e["verified"] and e["gptq"]["convs"] == 4 and "bias_correction" in e and e["calibration"]["samples"] == 4
    assert "gptq" not in plain and "calibration" not in plain

    def file_levels(path):
        ops = [o for o in load_program(path).ops if o.op_type == "constexpr_affine_dequantize"]
        levels = [o.inputs["quantized_data"].val for o in ops]
        return [q for q in levels if q.shape[-1] != 1]  # the wrapper's 1x1 anchor conv left out

    want = [_levels(c.weight, 127).round().to(torch.int8).numpy() for c in quantized_convs(chosen["student"], True)]
    got, base = file_levels(e["path"]), file_levels(plain["path"])
    assert len(got) == len(want) == 4
    for g, w in zip(got, want, strict=True):
        assert np.array_equal(g, w)
    assert any(not np.array_equal(g, b) for g, b in zip(got, base, strict=True))


def test_gptq_is_recorded_as_a_file_option_and_unused_on_float_files(tmp_path):
    from sr_shrink.export.options import ExportConfig, given_options, option_args, unused_options_note

    # on by default for w8a16 and TFLite int8 (BENCHMARKS 34), not for ONNX int8 nor after --qat
    assert ExportConfig("onnx", "w8a16").gptq and ExportConfig("tflite", "w8a16").gptq
    assert ExportConfig("tflite", "int8").gptq and not ExportConfig("onnx", "int8").gptq
    assert not ExportConfig("tflite", "int8", qat_steps=5).gptq and ExportConfig("tflite", "int8", qat_steps=5,
                                                                                   gptq=True).gptq
    assert not ExportConfig("onnx", "w8a16", gptq=False).gptq

    assert option_args(given_options({"gptq": True})) == ["--gptq"]
    assert option_args(given_options({"gptq": False})) == ["--no-gptq"]
    note = unused_options_note({"gptq": True}, ExportConfig("onnx", "fp32"))
    assert note is not None and "--gptq" in note
    assert unused_options_note({"gptq": True}, ExportConfig("onnx", "w8a16")) is None


def test_one_pass_rounds_as_the_pass_per_conv_does(tmp_path):
    """Calibration inputs of one size are rounded in a single forward pass (each conv as the batch reaches it),
    with the same weights the pass per conv gives; inputs of two sizes take the pass per conv."""
    student, _ = load_student(make_tiny_run(tmp_path / "r", n_stages=2) / "stage_02.pt")
    calib = [torch.rand(1, 3, 20, 20, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    passes = []
    student.register_forward_pre_hook(lambda mod, args: passes.append(1))  # deepcopied into gptq_round's copy
    fast, rec = gptq_round(student, calib)
    assert len(passes) == 1  # one pass
    slow, _ = gptq_round(student, calib, per_conv=True)
    assert len(passes) == 1 + rec["convs"]
    for a, b in zip(quantized_convs(fast, True), quantized_convs(slow, True), strict=True):
        assert torch.equal(a.weight, b.weight)
    gptq_round(student, [*calib, torch.rand(1, 3, 24, 24)])  # two sizes: two batches, per conv
    assert len(passes) == 1 + rec["convs"] + 2 * rec["convs"]  # each conv: a pass over both batches
