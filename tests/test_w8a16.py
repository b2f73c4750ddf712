"""--precision w8a16: int8 weights with 16-bit activations, for ONNX (QDQ uint16) and TFLite (16x8), verified like
the other precisions and accepted by bench."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto

from sr_shrink.bench import BenchConfig, run_bench
from sr_shrink.cli import main
from sr_shrink.errors import SRShrinkError
from sr_shrink.export import TOLERANCE_DB, export_run
from sr_shrink.export.onnx import ort_optimized_ops

FAST = {"eval_images": 2, "calib_samples": 4}


def test_onnx_w8a16_is_uint16_qdq_and_closer_than_int8(exported):
    e, int8 = exported("onnx", "w8a16"), exported("onnx", "int8")
    assert Path(e["path"]).name == "stage_02_w8a16.onnx" and e["precision"] == "w8a16"
    v = e["verification"]
    assert v["tolerance_db"] == TOLERANCE_DB["w8a16"] == 0.01 and v["tolerance_for"] == "w8a16"
    assert e["calibration"]["samples"] == 4 and e["quantization"]["activations"].startswith("uint16")
    g = onnx.load(e["path"]).graph
    inits = {t.name: t for t in g.initializer}
    q_types = {inits[n.input[2]].data_type for n in g.node if n.op_type == "QuantizeLinear"}
    assert q_types == {TensorProto.UINT16}  # every activation is quantised to 16 bits
    weights = [t for t in g.initializer if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    n_conv = exported("onnx", "fp32")["ops"]["Conv"]
    assert len(weights) == n_conv - 1  # all but the exact 1x1 anchor conv: head and tail too
    assert max(int(np.abs(onnx.numpy_helper.to_array(w).astype(np.int32)).max()) for w in weights) == 127
    # 16-bit activations leave only the int8 weights' rounding: closer to the student than int8, although int8
    # keeps the first and last convs float and w8a16 quantises them
    assert v["psnr_vs_torch"] >= 55 and v["psnr_vs_torch"] > int8["verification"]["psnr_vs_torch"] + 1
    assert abs(v["delta_psnr_y"]) < abs(int8["verification"]["delta_psnr_y"]) + 0.01
    # ONNX Runtime's CPU provider has no 16-bit QLinearConv: it runs the file as its float simulation
    ops = ort_optimized_ops(Path(e["path"]))
    assert ops.get("QLinearConv", 0) == 0 and ops["DequantizeLinear"] > 0


def test_tflite_w8a16_is_16x8_with_float_io(exported):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    e = exported("tflite", "w8a16", input_size="32x48")
    int8 = exported("tflite", "int8", input_size="32x48")
    assert e["inputs"][0]["dtype"] == "float32" and e["outputs"][0]["dtype"] == "float32"
    assert e["quantization"]["activations"].startswith("int16") and e["quantization"]["io"] == "float32"
    model = fbu.read_model(e["path"])
    sg = model.subgraphs[0]
    conv = model.operatorCodes.index(next(oc for oc in model.operatorCodes
                                          if oc.builtinCode == schema.BuiltinOperator.CONV_2D))
    convs = [op for op in sg.operators if op.opcodeIndex == conv]
    assert convs and all(sg.tensors[op.inputs[0]].type == schema.TensorType.INT16 for op in convs)
    assert all(sg.tensors[op.inputs[1]].type == schema.TensorType.INT8 for op in convs)
    v = e["verification"]
    assert v["tolerance_db"] == 0.01 and v["psnr_vs_torch"] >= 55
    assert v["psnr_vs_torch"] > int8["verification"]["psnr_vs_torch"] + 5
    gpu = e["delegates"]["gpu"]  # the GPU delegate has no int16 kernels: the report says so and what to use
    assert not gpu["ok"] and any("INT16" in r for r in gpu["reasons"]) and any("fp16" in f for f in gpu["fixes"])


def test_w8a16_is_refused_for_coreml(export_run_dir):
    with pytest.raises(SRShrinkError, match="w8a16 is for onnx and tflite"):
        export_run(export_run_dir, "coreml", precision="w8a16")


def test_cli_export_warns_in_one_line_for_the_gpu_delegate(export_run_dir, tmp_path):
    out = tmp_path / "w"
    res = CliRunner().invoke(main, ["export", str(export_run_dir), "--target", "tflite", "--stage", "1",
                                    "--precision", "w8a16", "--input-size", "24x24", "--out", str(out),
                                    "--calib-samples", "2"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if "GPU delegate" in ln]
    assert len(lines) == 1 and lines[0].startswith("warning: stage_01_w8a16.tflite") and "--precision fp16" in lines[0]
    res = CliRunner().invoke(main, ["export", str(export_run_dir), "--target", "tflite", "--stage", "1",
                                    "--input-size", "24x24", "--out", str(out)])
    assert res.exit_code == 0 and "GPU delegate" not in res.output  # the fp32 file runs whole on it


def test_bench_takes_w8a16_like_the_other_precisions(tiny_run, tmp_path):
    with pytest.raises(SRShrinkError, match="unknown precision"):
        BenchConfig(precisions=("w4a16",)).validate()
    cfg = BenchConfig(runtimes=("onnxruntime",), precisions=("fp32", "w8a16"), input_size=(32, 32), max_images=1,
                      repeats=2, warmup=0, rounds=1, stages=(2,))
    result = run_bench(tiny_run, cfg)
    rows = {r["precision"]: r for r in result["rows"] if r["runtime"] == "onnxruntime"}
    assert set(rows) == {"fp32", "w8a16"}, result["notes"]
    assert Path(rows["w8a16"]["path"]).name == "stage_02_w8a16.onnx"
    assert abs(rows["w8a16"]["psnr_y"] - rows["fp32"]["psnr_y"]) < 0.1
    assert result["recommended"]["precision"] in rows


def _nudged_runner(student, pairs, scale: int, toward_hr: float):
    """Return a runner whose output is the student's moved ``toward_hr`` of the way to the ground truth: a file
    that is better than the student by a controlled amount and at a controlled distance from it."""
    import torch

    from sr_shrink.export.verify import make_sample

    targets = {}
    for pair in pairs:
        s = make_sample(pair, scale, None)
        targets[s.lr.numpy().tobytes()] = s.hr.unsqueeze(0)

    def run(lr: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            ref = student(torch.from_numpy(lr)).clamp(0, 1)
        return (ref + toward_hr * (targets[lr.tobytes()] - ref)).numpy()

    return run


def test_w8a16_verifies_against_a_loss_bound_not_a_band():
    import torch

    from sr_shrink.data import load_eval_set
    from sr_shrink.export.verify import LOSS_BOUND, verify, within_tolerance
    from sr_shrink.models.student import SRStudent

    assert within_tolerance(+0.015, 69.6, "w8a16") == (True, "")  # section 16's real student: a gain, not a loss
    assert within_tolerance(-0.009, 69.6, "w8a16")[0] and not within_tolerance(-0.011, 69.6, "w8a16")[0]
    ok, why = within_tolerance(+0.015, 45.0, "w8a16")  # a gain from a file far from the student: not the student
    assert not ok and "45.0 dB PSNR from it" in why
    assert not within_tolerance(float("nan"), 70.0, "w8a16")[0]
    # negative controls: the other precisions keep their two-sided band
    assert not within_tolerance(+0.015, 69.6, "fp16")[0] and not within_tolerance(+0.31, 69.6, "int8")[0]
    assert within_tolerance(+0.009, 69.6, "fp16")[0] and set(LOSS_BOUND) == {"w8a16"}

    torch.manual_seed(0)
    student = SRStudent(scale=2, n_blocks=1, channels=4).eval()
    pairs = load_eval_set(2, max_images=2)
    gain = verify(_nudged_runner(student, pairs, 2, 0.02), student, pairs, 2, None, "w8a16", "stand-in")
    assert gain["delta_psnr_y"] > 0.01 and gain["psnr_vs_torch"] >= 50, gain
    assert gain["verified"] and gain["rule"] == "loss bound" and gain["min_psnr_vs_torch"] == 50.0
    as_fp16 = verify(_nudged_runner(student, pairs, 2, 0.02), student, pairs, 2, None, "fp16", "stand-in")
    assert not as_fp16["verified"] and "rule" not in as_fp16  # the same file fails fp16's band
    loss = verify(_nudged_runner(student, pairs, 2, -0.05), student, pairs, 2, None, "w8a16", "stand-in")
    assert loss["delta_psnr_y"] < -0.01 and not loss["verified"] and "outside" in loss["reason"]


def test_w8a16_corrects_biases_by_default_and_the_made_by_command_says_otherwise(tiny_run, tmp_path):
    from sr_shrink.bench.artifacts import export_command
    from sr_shrink.export.options import ExportConfig
    from sr_shrink.run import RunDir

    assert ExportConfig("onnx", precision="w8a16").bias_correction is True
    assert ExportConfig("tflite", precision="w8a16").bias_correction is True
    assert ExportConfig("onnx", precision="int8").bias_correction is False
    assert ExportConfig("onnx", precision="w8a16", bias_correction=False).bias_correction is False
    e = export_run(tiny_run, "onnx", stage=1, precision="w8a16", **FAST)[0]
    assert e["bias_correction"]["convs"] > 0 and "bias_correction" not in e["options"]  # the default: not "given"
    run = RunDir.open(tiny_run)
    assert "bias-correction" not in export_command(run, Path(e["path"]))
    res = CliRunner().invoke(main, ["export", str(tiny_run), "--target", "onnx", "--precision", "w8a16", "--stage",
                                    "1", "--no-bias-correction", "--calib-samples", "4", "--out", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    plain = json_entry(tmp_path / "x")
    assert "bias_correction" not in plain and plain["options"]["bias_correction"] is False
    assert "--no-bias-correction" in export_command(run, tmp_path / "x" / plain["file"])
    # a w8a16 entry written before the default changed (no options record, no correction) rebuilds without it
    index = tmp_path / "x" / "export.json"
    data = json.loads(index.read_text())
    del data["exports"][0]["options"]
    index.write_text(json.dumps(data))
    assert "--no-bias-correction" in export_command(run, tmp_path / "x" / plain["file"])


def json_entry(folder: Path) -> dict:
    return json.loads((folder / "export.json").read_text())["exports"][0]
