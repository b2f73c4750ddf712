"""Data-free QAT (``sr-shrink export --precision int8 --qat STEPS``): the fake quantization, that fine-tuning
brings the real int8 export closer to the fp32 student than plain PTQ, the export.json fields, and the errors."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_run
from export_helpers import widen_channel

from sr_shrink.cli import main
from sr_shrink.errors import SRShrinkError
from sr_shrink.export import export_run
from sr_shrink.export.qat import DataFreeInputs, QATConfig, QATStudent, fake_quant_weight, finetune
from sr_shrink.models.student import load_student
from sr_shrink.run import RunDir

FAST = {"eval_images": 2, "calib_samples": 4, "input_size": "48x48"}


def test_fake_quant_weight_is_per_channel_int8_with_straight_through_gradient():
    torch.manual_seed(0)
    w = (torch.randn(4, 3, 3, 3) * torch.tensor([1.0, 0.1, 0.01, 5.0]).view(4, 1, 1, 1)).requires_grad_()
    q = fake_quant_weight(w)
    for o in range(4):
        step = w[o].detach().abs().max() / 127
        levels = (q[o] / step).detach()
        assert torch.allclose(levels, levels.round(), atol=1e-3) and levels.abs().max() <= 127 + 1e-3
        assert float((q[o] - w[o]).abs().max()) <= float(step) / 2 + 1e-6
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # no weight is clipped: gradient passes straight through


def test_qat_student_matches_the_student_in_float_and_finetune_is_deterministic(tmp_path):
    run = make_tiny_run(tmp_path / "r", n_stages=2)
    st, _ = load_student(run / "stage_02.pt")
    x = torch.rand(2, 3, 12, 12)
    q = QATStudent(st, activations=False)
    assert torch.allclose(q(x), st(x), atol=0.02) and not torch.equal(q(x), st(x))  # only weight rounding
    rd = RunDir.open(run)
    outs = []
    for _ in range(2):
        tuned, rec = finetune(st, st, DataFreeInputs(rd, 2, 8, seed=3), QATConfig(steps=4, lr=1e-3, seed=3))
        outs.append(torch.cat([p.flatten() for p in tuned.parameters()]))
    assert torch.equal(outs[0], outs[1]) and rec["steps"] == 4 and rec["inputs"]["source"] == "deadleaves"
    assert not torch.equal(outs[0], torch.cat([p.flatten() for p in st.parameters()]))  # it did train


def test_qat_beats_ptq_on_a_student_that_int8_hurts(tmp_path):
    """The comparison that could fail: the TFLite full-int8 export of a QAT student is closer to the original
    fp32 student (RGB PSNR and Y-PSNR delta) than the plain PTQ export of that student."""
    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    teacher = widen_channel(run)  # self-distillation: the target is the fp32 student itself
    e = export_run(run, "tflite", precision="int8", qat_steps=60, qat_lr=1e-3, teacher=str(teacher), **FAST)[0]
    ptq, qat = e["qat"]["ptq_verification"], e["qat"]["fp32_verification"]
    assert e["ptq_delta_psnr_y"] == ptq["delta_psnr_y"] and e["qat_delta_psnr_y"] == qat["delta_psnr_y"]
    assert e["ptq_delta_psnr_y"] < -0.05  # int8 PTQ loses measurable Y-PSNR on this student
    assert abs(e["qat_delta_psnr_y"]) < abs(e["ptq_delta_psnr_y"]) - 0.03
    assert qat["psnr_vs_torch"] > ptq["psnr_vs_torch"] + 0.5
    assert e["verified"] and e["qat"]["final_loss"] < e["qat"]["first_loss"]


def test_onnx_qat_export_verifies_and_records_the_deltas(tmp_path):
    run = make_tiny_run(tmp_path / "r", n_stages=1, seed=0)
    out = tmp_path / "ex"
    e = export_run(run, "onnx", precision="int8", qat_steps=40, qat_lr=1e-3, teacher=str(run / "stage_01.pt"),
                   out=out, **FAST)[0]
    assert e["file"] == "stage_01_int8.onnx" and e["verified"]
    saved = json.loads((out / "export.json").read_text())["exports"][0]
    for key in ("qat_steps", "ptq_delta_psnr_y", "qat_delta_psnr_y", "qat", "verification", "calibration"):
        assert key in saved, key
    assert saved["qat_steps"] == 40 and saved["qat"]["teacher"]["source"] == "--teacher"
    # the file is verified against its own source (the fine-tuned student), the deltas against the original
    assert saved["verification"]["torch_psnr_y"] != saved["qat"]["fp32_verification"]["torch_psnr_y"]
    assert saved["qat"]["fp32_verification"]["torch_psnr_y"] == saved["qat"]["ptq_verification"]["torch_psnr_y"]
    # (no "closer than PTQ" claim here: with the ONNX scheme's float head/tail and 7-bit weights, PTQ of this random
    # student is already within 0.03 dB and QAT does not reliably improve on it; the TFLite test above does)
    plain = export_run(run, "onnx", precision="int8", out=tmp_path / "plain", **FAST)[0]
    assert "qat_steps" not in plain and "qat" not in plain  # without --qat the entry is as before


def test_qat_uses_the_runs_teacher_and_generator(tmp_path, tiny_teacher):
    from sr_shrink.distill.generator import RefineGenerator, save_generator

    run = make_tiny_run(tmp_path / "r", n_stages=1)
    data = json.loads((run / "run.json").read_text())
    data["teacher"] = {"path": str(tiny_teacher), "sha256": "0" * 64, "value_range": 1.0}
    (run / "run.json").write_text(json.dumps(data))
    save_generator(RefineGenerator(patch=8), run / "generator.pt")
    e = export_run(run, "onnx", precision="int8", qat_steps=2, verify=False, **FAST)[0]
    assert e["qat"]["teacher"]["source"] == "run.json" and "sha256 differs" in e["qat"]["teacher"]["note"]
    assert e["qat"]["inputs"]["source"] == "deadleaves + generator.pt" and e["qat"]["inputs"]["lr_patch"] == 16
    assert e["qat_steps"] == 2 and e["ptq_delta_psnr_y"] is None  # verification off: no deltas measured


def test_qat_errors_are_one_line(tmp_path):
    run = make_tiny_run(tmp_path / "r", n_stages=1)  # run.json names teacher "tiny", which does not exist
    cli = CliRunner()

    def err(*args: str) -> str:
        res = cli.invoke(main, ["export", str(run), "--target", "onnx", *args])
        assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.strip().count("\n") == 0, \
            res.output
        return res.output

    assert "add --precision int8" in err("--qat", "5")
    assert "add --precision int8" in err("--qat", "5", "--precision", "fp16")
    assert "--qat" in err("--qat", "-1", "--precision", "int8")
    assert "'tiny', which is not there" in err("--qat", "5", "--precision", "int8")
    assert "--teacher only applies to --qat" in err("--teacher", str(run / "stage_01.pt"))
    assert not (run / "exports").exists()  # nothing written before the errors
    lone = tmp_path / "lone"
    lone.mkdir()
    (run / "stage_01.pt").rename(lone / "stage_01.pt")
    res = cli.invoke(main, ["export", str(lone / "stage_01.pt"), "--target", "onnx", "--precision", "int8",
                            "--qat", "5"])
    assert res.exit_code == 2 and "no run.json here" in res.output and "--teacher PATH" in res.output
    with pytest.raises(SRShrinkError, match="--qat-lr"):
        export_run(lone / "stage_01.pt", "onnx", precision="int8", qat_steps=1, qat_lr=float("nan"))
    res = cli.invoke(main, ["export", str(lone / "stage_01.pt"), "--target", "onnx", "--precision", "fp32",
                            "--qat", "0", "--input-size", "32x32", "--eval", str(tmp_path / "none")])
    assert "--qat" not in res.output  # --qat 0 is off: any precision is fine (this fails on the --eval folder)
