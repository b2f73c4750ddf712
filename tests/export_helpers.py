"""Plain exports for runtime tests, independent of sr_shrink.export: ONNX via the legacy torch.onnx exporter
(opset 17, dynamic H/W) and TFLite via litert_torch at a fixed input size."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from sr_shrink.models.registry import save_model_checkpoint
from sr_shrink.models.student import load_student


def export_onnx(model: torch.nn.Module, path: Path, hw: tuple[int, int] = (32, 32)) -> Path:
    """Write ``model`` as an ONNX file with dynamic height/width; return the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), (torch.rand(1, 3, *hw),), str(path), dynamo=False, opset_version=17,
                          input_names=["lr"], output_names=["sr"],
                          dynamic_axes={"lr": {2: "h", 3: "w"}, "sr": {2: "sh", 3: "sw"}})
    return path


def export_tflite(model: torch.nn.Module, path: Path, hw: tuple[int, int] = (32, 32)) -> Path:
    """Write ``model`` as a .tflite with a static (1,3,h,w) input; return the path."""
    import litert_torch

    path.parent.mkdir(parents=True, exist_ok=True)
    litert_torch.convert(model.eval(), (torch.rand(1, 3, *hw),)).export(str(path))
    return path


def export_stage(run_dir: Path, stage: int, runtime: str, hw: tuple[int, int]) -> Path:
    """Export a run's fp32 stage where bench looks for it: RUN_DIR/exports/stage_XX_fp32.<onnx|tflite>."""
    model, _ = load_student(run_dir / f"stage_{stage:02d}.pt")
    if runtime == "onnxruntime":
        return export_onnx(model, run_dir / "exports" / f"stage_{stage:02d}_fp32.onnx", hw)
    return export_tflite(model, run_dir / "exports" / f"stage_{stage:02d}_fp32.tflite", hw)


def widen_channel(run: Path, k: float = 4.0) -> Path:
    """Rescale channel 0 of the run's stage-1 residual stream by ``k`` (and its readers by 1/k): the fp32
    function is unchanged (ReLU is positively homogeneous) but one channel now sets every per-tensor activation
    range of the stream, so int8 PTQ loses measurable Y-PSNR. Returns the stage file, also the teacher."""
    path = run / "stage_01.pt"
    st, _ = load_student(path)
    x = torch.rand(1, 3, 20, 20)
    before = st(x)
    with torch.no_grad():
        st.head.weight[0] *= k
        st.head.bias[0] *= k
        for b in st.body:
            b.conv1.weight[:, 0] /= k
            b.conv2.weight[0] *= k
            b.conv2.bias[0] *= k
        st.tail.weight[:, 0] /= k
    assert torch.allclose(st(x), before, atol=1e-5)
    save_model_checkpoint(st, "student", st.config(), path, extra={"stage": 1, "n_blocks": 1, "scale": 2})
    return path
