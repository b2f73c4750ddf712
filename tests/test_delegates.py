"""The LiteRT GPU-delegate report: rules read from the .tflite flatbuffer, refusals with the option that fixes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sr_shrink.export.delegates import delegate_warning, gpu_report
from sr_shrink.export.wrapper import build_wrapper
from sr_shrink.models.student import load_student


class Rank6Shuffle(torch.nn.Module):
    """The textbook pixel shuffle: a rank-6 reshape, a transpose, a reshape back."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        y = x.reshape(1, 3, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(1, 3, 2 * h, 2 * w)
        return torch.relu(y)


class Rank4Shuffle(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(F.pixel_shuffle(x, 2))


def _convert(model: torch.nn.Module, x: torch.Tensor, path: Path) -> Path:
    import litert_torch

    litert_torch.config.show_progress = False
    litert_torch.convert(model.eval(), (x,)).export(str(path))
    return path


def test_rank6_reshape_is_refused_and_rank4_passes(tmp_path):
    bad = gpu_report(_convert(Rank6Shuffle(), torch.rand(1, 12, 8, 8), tmp_path / "r6.tflite"))
    assert not bad["ok"] and any("rank > 4" in r and "[1, 3, 2, 2, 8, 8]" in r for r in bad["reasons"])
    assert any("--shuffle convt" in f for f in bad["fixes"])
    good = gpu_report(_convert(Rank4Shuffle(), torch.rand(1, 12, 8, 8), tmp_path / "r4.tflite"))
    assert good == {**good, "ok": True, "reasons": [], "fixes": []}
    line = delegate_warning("r6.tflite", bad)
    assert line.startswith("warning: r6.tflite will not run wholly") and "--shuffle convt" in line and "\n" not in line
    assert delegate_warning("r4.tflite", good) is None


def test_default_exports_pass_and_clamp_op_is_gpu_safe(exported, export_run_dir, tmp_path):
    """The default TFLite exports (fp32, fp16, int8) pass; the converter's own clamp (RELU_0_TO_1) would not."""
    for precision in ("fp32", "fp16", "int8"):
        e = exported("tflite", precision, input_size="32x48")
        assert e["delegates"]["gpu"]["ok"], e["delegates"]
        assert "RELU_0_TO_1" not in e["ops"]
    assert "MUL" in exported("tflite", "fp32", input_size="32x48")["ops"]
    student = load_student(export_run_dir / "stage_02.pt")[0]
    plain = build_wrapper(student, "nhwc")  # clamp_form "clamp": what the converter makes RELU_0_TO_1 of
    rep = gpu_report(_convert(plain, torch.rand(1, 16, 16, 3), tmp_path / "clamp.tflite"))
    assert not rep["ok"] and any("RELU_0_TO_1" in r for r in rep["reasons"])


def test_dynamic_shape_is_refused(tmp_path):
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    path = _convert(Rank4Shuffle(), torch.rand(1, 12, 8, 8), tmp_path / "dyn.tflite")
    model = fbu.read_model(str(path))
    sg = model.subgraphs[0]
    t = sg.tensors[sg.inputs[0]]
    t.shapeSignature = [1, 12, -1, -1]
    fbu.write_model(model, str(path))
    rep = gpu_report(path)
    assert not rep["ok"] and any("dynamic" in r for r in rep["reasons"])
    assert any("--input-size" in f for f in rep["fixes"])


@pytest.mark.parametrize("activation,ok", [("RELU6", True), ("SIGN_BIT", False)])
def test_fused_activation_rules(tmp_path, activation, ok):
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    conv = torch.nn.Conv2d(3, 4, 3, padding=1)
    path = _convert(conv, torch.rand(1, 3, 8, 8), tmp_path / f"{activation}.tflite")
    model = fbu.read_model(str(path))
    ops = [op for op in model.subgraphs[0].operators if hasattr(op.builtinOptions, "fusedActivationFunction")]
    assert ops
    for op in ops:
        op.builtinOptions.fusedActivationFunction = getattr(schema.ActivationFunctionType, activation)
    fbu.write_model(model, str(path))
    rep = gpu_report(path)
    assert rep["ok"] is ok
    if not ok:
        assert any("SIGN_BIT" in r for r in rep["reasons"])


def test_every_fix_the_delegate_report_names_is_an_export_option():
    import re

    from sr_shrink.cli import main
    from sr_shrink.export.delegates import FIXES

    flags = {o for p in main.commands["export"].params for o in (*p.opts, *p.secondary_opts)}
    named = {f for fix in FIXES.values() for f in re.findall(r"--[a-z][a-z0-9-]*", fix)}
    assert named and named <= flags, named - flags
