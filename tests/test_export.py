"""sr-shrink export: every target and precision that runs here, checked against the PyTorch student with
the real runtimes (onnxruntime, LiteRT; Core ML through the numpy MIL evaluator), plus the graph checks,
export.json and the one-line errors."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from click.testing import CliRunner
from conftest import make_tiny_run, one_error_line
from onnx import TensorProto, helper
from PIL import Image

from sr_shrink import mil_eval
from sr_shrink.cli import main
from sr_shrink.data import load_eval_set
from sr_shrink.errors import SRShrinkError
from sr_shrink.export import TOLERANCE_DB, build_wrapper, check_graph, export_run
from sr_shrink.export.calib import mosaic
from sr_shrink.export.onnx import onnx_graph, ort_optimized_ops
from sr_shrink.export.options import COREML_SHAPES
from sr_shrink.models.student import SRStudent, load_student
from sr_shrink.run import RunDir
from sr_shrink.runtimes import open_runner

FAST = {"eval_images": 2, "calib_samples": 4}


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def _lr(h: int = 48, w: int = 80) -> torch.Tensor:
    """A real LR photo crop (1, 3, h, w)."""
    return load_eval_set(2, max_images=1)[0].lr[:, :h, :w].unsqueeze(0).contiguous()


@pytest.fixture(scope="module")
def run(export_run_dir) -> Path:
    """The session's tiny run; its stage-2 exports come from conftest's shared ``exported`` fixture."""
    return export_run_dir


@pytest.fixture(scope="module")
def student(run):
    return load_student(run / "stage_02.pt")[0]


# ---------------------------------------------------------------- the mobile-safe wrapper


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("layout,shuffle", [("nchw", "native"), ("nhwc", "native"), ("nchw", "convt")])
def test_wrapper_equals_student(scale, layout, shuffle):
    torch.manual_seed(scale)
    s = SRStudent(scale, 2, 8).eval()
    for p in s.parameters():
        torch.nn.init.normal_(p, 0, 0.1)
    x = torch.rand(1, 3, 7, 9)
    w, raw = build_wrapper(s, layout, shuffle), build_wrapper(s, layout, shuffle, clamp=False)

    def run(m):
        return m(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) if layout == "nhwc" else m(x)

    want = s(x)
    assert ((want < 0) | (want > 1)).any()  # the clamp has something to do here
    assert torch.allclose(run(w), want.clamp(0, 1), atol=1e-6)
    assert torch.allclose(run(raw), want, atol=1e-6)
    assert any(p.abs().sum() > 0 for p in s.parameters())  # the student was not zeroed by the copy


# ---------------------------------------------------------------- ONNX


def _ort(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    dtype = np.float16 if inp.type == "tensor(float16)" else np.float32
    return sess.run(None, {inp.name: x.astype(dtype)})[0].astype(np.float32)


@pytest.mark.parametrize("precision,floor", [("fp32", 100.0), ("fp16", 45.0), ("int8", 30.0)])
def test_onnx_export_runs_in_onnxruntime(exported, student, precision, floor):
    e = exported("onnx", precision)
    path = Path(e["path"])
    assert path.name == f"stage_02_{precision}.onnx" and path.stat().st_size == e["size_bytes"]
    x = _lr()
    got = _ort(path, x.numpy())
    assert got.shape == (1, 3, 96, 160)
    assert _psnr(got, student(x).clamp(0, 1).detach().numpy()) >= floor
    assert e["verified"] and e["verification"]["psnr_vs_torch"] >= floor
    assert e["verification"]["images"] == 2 and e["verification"]["torch_psnr_y"] > 20
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 17
    d2s = [n for n in model.graph.node if n.op_type == "DepthToSpace"]
    assert len(d2s) == 1 and helper.get_attribute_value(d2s[0].attribute[0]) in (b"CRD", 2)
    assert {m.key: m.value for m in model.metadata_props}["stage"] == "2"
    assert set(e["ops"]) >= {"Conv", "Add", "DepthToSpace"}
    assert e["graph_checks"]["max_rank"] <= 4


def test_onnx_fp16_and_int8_details(exported):
    fp16, int8 = exported("onnx", "fp16"), exported("onnx", "int8")
    assert fp16["io_dtype"] == "float32" and "Cast" in fp16["ops"]
    assert exported("onnx", "fp16", native_io=True)["io_dtype"] == "float16"
    assert int8["ops"]["QuantizeLinear"] > 0 and int8["ops"]["DequantizeLinear"] > 0
    assert int8["calibration"]["source"] == "images" and int8["calibration"]["samples"] == 4
    assert int8["size_bytes"] < exported("onnx", "fp32")["size_bytes"]
    g = onnx.load(int8["path"]).graph  # the anchor path stays float: 1x1 conv on float weights, float Add
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    d2s = next(n for n in g.node if n.op_type == "DepthToSpace")
    clip = producer[d2s.input[0]]  # the output clamp, in float between the anchor Add and the shuffle
    assert clip.op_type == "Clip" and producer[clip.input[0]].op_type == "Add"
    convs = [n for n in g.node if n.op_type == "Conv"]
    anchor = [n for n in convs if n.input[1] in inits and list(inits[n.input[1]].dims[2:]) == [1, 1]]
    assert len(anchor) == 1 and inits[anchor[0].input[1]].data_type == TensorProto.FLOAT
    assert sum(producer[n.input[1]].op_type == "DequantizeLinear" for n in convs if n.input[1] in producer) >= 3


def test_onnx_int8_runs_on_integer_kernels_in_onnxruntime(exported):
    """What int8 speed rests on (BENCHMARKS section 9): after ONNX Runtime's graph optimisations every body conv
    is a QLinearConv and every residual Add a QLinearAdd; only the 1x1 anchor conv, the first and last 3x3
    convs and the anchor Add run in float, and one tensor (the head's output) is quantised at run time.
    (int8 activations left half the body convs as float Convs between Quantize/DequantizeLinear pairs on x86.)"""
    fp32, int8 = exported("onnx", "fp32"), exported("onnx", "int8")
    n_conv, n_add = fp32["ops"]["Conv"], fp32["ops"]["Add"]
    ops = ort_optimized_ops(Path(int8["path"]))
    assert ops.get("QLinearConv", 0) == n_conv - 3 > 0 and ops.get("Conv", 0) == 3
    assert ops.get("QLinearAdd", 0) == n_add - 1 and ops.get("Add", 0) <= 1  # the anchor Add may fuse into a Conv
    assert ops.get("QuantizeLinear", 0) == 1
    # negative control: the same file with ORT's QDQ fusions off runs every conv in float between Q/DQ pairs
    basic = ort_optimized_ops(Path(int8["path"]), "basic")
    assert basic.get("QLinearConv", 0) == 0 and basic["Conv"] == n_conv and basic["QuantizeLinear"] > 1
    # 7-bit weights: u8 x s8 products summed in pairs fit AVX2's int16 (255 * 64 * 2 < 32767), so no CPU saturates
    weights = [onnx.numpy_helper.to_array(t) for t in onnx.load(int8["path"]).graph.initializer
               if t.data_type == TensorProto.INT8 and len(t.dims) == 4]
    assert len(weights) == n_conv - 3 and max(int(np.abs(w.astype(np.int32)).max()) for w in weights) == 64
    assert "[-64, 64]" in int8["quantization"]["weights"] and int8["quantization"]["activations"].startswith("uint8")


def test_onnx_dynamic_input_sizes_one_file(exported, student):
    path = Path(exported("onnx", "fp32")["path"])
    for h, w in [(48, 80), (64, 64)]:
        x = _lr(h, w)
        got = _ort(path, x.numpy())
        assert got.shape == (1, 3, 2 * h, 2 * w)
        assert np.abs(got - student(x).clamp(0, 1).detach().numpy()).max() < 1e-4


def test_onnx_fixed_size_and_nhwc(exported, student):
    e = exported("onnx", "fp32", input_size="40x56", layout="nhwc")
    assert e["inputs"][0]["shape"] == [1, 40, 56, 3] and e["shape_policy"].startswith("fixed 40x56")
    x = _lr(40, 56)
    got = _ort(Path(e["path"]), x.permute(0, 2, 3, 1).numpy()).transpose(0, 3, 1, 2)
    assert np.abs(got - student(x).clamp(0, 1).detach().numpy()).max() < 1e-4
    assert e["verification"]["inputs"].startswith("40x56") and e["verified"]


# ---------------------------------------------------------------- Core ML


@pytest.mark.parametrize("precision,floor", [("fp32", 100.0), ("fp16", 45.0), ("int8", 30.0)])
def test_coreml_export_evaluates_like_torch(exported, student, precision, floor):
    e = exported("coreml", precision)
    path = Path(e["path"])
    assert path.is_dir() and path.suffix == ".mlpackage" and e["size_bytes"] > 0
    runner = open_runner(path)
    assert runner.input_sizes == COREML_SHAPES and runner.tile_hw == (256, 256)  # the enumerated default
    x = torch.nn.functional.pad(_lr(), (0, 256 - 80, 0, 256 - 48), mode="replicate")
    got = runner(x.numpy())
    want = student(x).clamp(0, 1).detach().numpy()
    assert _psnr(got, want) >= floor
    if precision == "fp32":
        assert np.abs(got - want).max() < 1e-4
    assert e["verified"] and e["verification"]["runtime"].startswith("numpy MIL")
    assert e["inputs"][0]["name"] == "lr" and e["inputs"][0]["enumerated"][0] == [1, 3, 256, 256]
    assert set(e["verification"]["shapes"]) == {f"{h}x{w}" for h, w in COREML_SHAPES}
    with pytest.raises(SRShrinkError, match="only the sizes it enumerates"):  # as Core ML refuses them
        runner(_lr().numpy())
    assert e["compute_precision"] == ("fp32" if precision == "fp32" else "fp16")
    assert {"conv", "pixel_shuffle"} <= set(e["ops"]) and e["graph_checks"]["max_rank"] <= 4
    if precision == "int8":
        assert "constexpr_affine_dequantize" in e["ops"]


def test_coreml_metadata_and_io(exported, run):
    import coremltools as ct

    e = exported("coreml", "fp16")
    spec = ct.models.MLModel(e["path"], skip_model_load=True).get_spec()
    meta = dict(spec.description.metadata.userDefined)
    assert meta["scale"] == "2" and meta["stage"] == "2" and meta["n_blocks"] == "2"
    assert meta["val_psnr_y"] == "32.0" and meta["teacher_psnr_y"] == "33.0"
    assert [o.name for o in spec.description.output] == ["sr"]


def test_coreml_dynamic_input_sizes_one_package(exported, student):
    e = exported("coreml", "fp32", shapes="any")
    assert e["inputs"][0]["ranges"][2:] == [[8, 2048], [8, 2048]] and "enumerated" not in e["inputs"][0]
    run_fn = open_runner(e["path"])
    for h, w in [(48, 80), (64, 64)]:
        x = _lr(h, w)
        got = run_fn(x.numpy())
        assert got.shape == (1, 3, 2 * h, 2 * w)
        assert np.abs(got - student(x).clamp(0, 1).detach().numpy()).max() < 1e-4


def test_coreml_palettized_weights_decode(exported, student):
    e = exported("coreml", "fp16", palettize=8, shapes="any")
    assert Path(e["path"]).name == "stage_02_pal8.mlpackage"
    assert "constexpr_lut_to_dense" in e["ops"] and e["palettization"]["nbits"] == 8
    x = _lr()
    got = open_runner(e["path"])(x.numpy())
    assert _psnr(got, student(x).clamp(0, 1).detach().numpy()) >= 40  # wrong index unpacking gives noise (~10 dB)


def test_mil_conv_pads_and_strides_as_mil_defines_them():
    """The evaluator's conv (torch's float32 convolution since it replaced a numpy window sum) against a plain sum
    of shifted products, for each pad type and a stride: a pad put on the wrong side or edge shows here."""
    rng = np.random.default_rng(0)
    x = rng.random((1, 5, 23, 17), dtype=np.float32)
    w = rng.standard_normal((7, 5, 3, 3)).astype(np.float32)
    b = rng.standard_normal(7).astype(np.float32)
    for pad_type, pad, strides, pads in [("same", (0, 0, 0, 0), (1, 1), (1, 1, 1, 1)),
                                         ("valid", (0, 0, 0, 0), (2, 1), (0, 0, 0, 0)),
                                         ("custom", (2, 0, 1, 3), (1, 2), (2, 0, 1, 3))]:
        got = mil_eval.conv(x, w, b, strides=strides, pad_type=pad_type, pad=pad)
        (pt, pb, pl, pr), (sh, sw) = pads, strides
        xp = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        oh, ow = (xp.shape[2] - 3) // sh + 1, (xp.shape[3] - 3) // sw + 1
        want = np.zeros((1, 7, oh, ow)) + b.reshape(1, -1, 1, 1)
        for i in range(3):
            for j in range(3):
                patch = xp[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
                want += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
        assert got.dtype == np.float32 and got.shape == want.shape, pad_type
        assert np.abs(got - want).max() < 1e-4, pad_type


def test_mil_program_takes_a_read_only_input_without_a_warning(exported, student):
    """The evaluator hands arrays to torch without copying them; a read-only one (a caller's input, a program's
    constants) made torch warn that writing to it is undefined, which none of its ops does."""
    import warnings

    prog = mil_eval.load_program(exported("coreml", "fp16", shapes="any")["path"])
    x = _lr(40, 40)
    feed = x.numpy().copy()
    feed.setflags(write=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        got = mil_eval.run_program(prog, {prog.inputs[0]: feed})[prog.outputs[0]]
    assert np.abs(got - student(x).clamp(0, 1).detach().numpy()).max() < 2e-3  # fp16 program
    assert np.array_equal(feed, x.numpy())


def test_mil_program_frees_values_after_their_last_use(exported, student, monkeypatch):
    e = exported("coreml", "fp32", shapes="any")
    prog = mil_eval.load_program(e["path"])
    last = prog.last_uses
    freed = [n for names in last.values() for n in names]
    assert freed and not set(freed) & set(prog.outputs)
    for i, names in last.items():  # nothing freed at op i is read by a later op
        later = {v.name for op in prog.ops[i + 1:] for var in op.inputs.values()
                 for v in (var if isinstance(var, (list, tuple)) else (var,))}
        assert not set(names) & later
    held = []
    run_op = mil_eval._run_op
    monkeypatch.setattr(mil_eval, "_run_op", lambda op, env: held.append(len(env)) or run_op(op, env))
    x = _lr(40, 40)
    got = mil_eval.run_program(prog, {prog.inputs[0]: x.numpy()})[prog.outputs[0]]
    assert np.abs(got - student(x).clamp(0, 1).detach().numpy()).max() < 1e-4
    assert max(held) < len(prog.ops) // 2  # without freeing, env ends holding every op's value


def test_mil_evaluator_reports_missing_op(run, monkeypatch):
    monkeypatch.delitem(mil_eval.OPS, "pixel_shuffle")
    e = export_run(run, "coreml", stage=1, precision="fp32", out=run / "ex_missing_op", **FAST)[0]
    assert e["verified"] is False and "pixel_shuffle" in e["verification"]["reason"]
    index = json.loads((run / "ex_missing_op" / "export.json").read_text())
    assert index["exports"][0]["verified"] is False


# ---------------------------------------------------------------- TFLite


def _litert(path: Path, x_nhwc: np.ndarray) -> tuple[np.ndarray, dict]:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    it.set_tensor(inp["index"], x_nhwc.astype(inp["dtype"]))
    it.invoke()
    return it.get_tensor(out["index"]), inp


@pytest.mark.parametrize("precision,floor", [("fp32", 100.0), ("fp16", 45.0), ("int8", 30.0)])
def test_tflite_export_runs_in_litert(exported, student, precision, floor):
    e = exported("tflite", precision, input_size="32x48")
    assert e["layout"] == "nhwc" and e["inputs"][0]["shape"] == [1, 32, 48, 3]
    assert e["inputs"][0]["dtype"] == "float32" and e["outputs"][0]["dtype"] == "float32"
    x = _lr(32, 48)
    got, _ = _litert(Path(e["path"]), x.permute(0, 2, 3, 1).numpy())
    assert got.shape == (1, 64, 96, 3)
    assert _psnr(got.transpose(0, 3, 1, 2), student(x).clamp(0, 1).detach().numpy()) >= floor
    assert e["verified"] and e["graph_checks"]["max_rank"] <= 4 and "CONV_2D" in e["ops"]
    if precision == "int8":
        assert set(e["ops"]) >= {"QUANTIZE", "DEQUANTIZE"} and e["calibration"]["input_shape"] == [3, 32, 48]
    if precision == "fp16":
        assert "DEQUANTIZE" in e["ops"] and e["size_bytes"] < exported("tflite", "fp32", input_size="32x48")[
            "size_bytes"]


def test_tflite_default_size_is_256(exported):
    e = exported("tflite", "fp32")
    assert e["inputs"][0]["shape"] == [1, 256, 256, 3] and e["outputs"][0]["shape"] == [1, 512, 512, 3]
    assert e["verification"]["inputs"].startswith("256x256") and e["verified"]


def test_tflite_int8_native_io_nchw(exported, student):
    e = exported("tflite", "int8", input_size="32x48", layout="nchw", native_io=True)
    assert e["inputs"][0] == {"name": "serving_default_lr", "shape": [1, 3, 32, 48], "dtype": "int8"}
    assert "QUANTIZE" not in e["ops"] and e["quantization"]["io"] == "int8"
    x = _lr(32, 48)
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=e["path"], num_threads=1)
    it.allocate_tensors()
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    (si, zi), (so, zo) = inp["quantization"], out["quantization"]
    it.set_tensor(inp["index"], np.clip(np.round(x.numpy() / si + zi), -128, 127).astype(np.int8))
    it.invoke()
    got = (it.get_tensor(out["index"]).astype(np.float32) - zo) * so
    assert _psnr(got, student(x).clamp(0, 1).detach().numpy()) >= 30
    # the output range is pinned to [0, 1] in 255 steps: the int8 levels are the 8-bit image levels
    assert so == pytest.approx(1 / 255) and zo == -128 and e["quantization"]["output_range"] == [0.0, 1.0]
    assert got.min() >= 0 and got.max() <= 1 and np.allclose(got * 255, np.round(got * 255), atol=1e-3)


def test_tflite_convt_shuffle(run, student):
    e = export_run(run, "tflite", stage=2, out=run / "ex_convt", input_size="24x24", shuffle="convt", **FAST)[0]
    assert "TRANSPOSE_CONV" in e["ops"] and "RESHAPE" not in e["ops"]
    assert e["verified"] and e["verification"]["psnr_vs_torch"] >= 100


# ---------------------------------------------------------------- verification: Y-PSNR within a stated tolerance


@pytest.mark.parametrize("target,precision,opts", [("onnx", "fp32", {}), ("onnx", "fp16", {}), ("onnx", "int8", {}),
                                                   ("coreml", "fp16", {}), ("tflite", "int8", {"input_size": "32x48"})])
def test_verification_records_delta_and_tolerance(exported, target, precision, opts):
    e = exported(target, precision, **opts)
    v = e["verification"]
    assert v["tolerance_db"] == TOLERANCE_DB[precision] == {"fp32": 1e-3, "fp16": 0.01, "int8": 0.3}[precision]
    assert v["delta_psnr_y"] == pytest.approx(v["psnr_y"] - v["torch_psnr_y"], abs=1e-4)
    assert abs(v["delta_psnr_y"]) <= v["tolerance_db"] and v["verified"] and e["verified"]
    assert v["psnr_vs_torch"] > 30 and v["max_abs_err"] < 0.5 and "reason" not in v


def test_verify_needs_the_y_psnr_within_tolerance(student):
    from sr_shrink.export.verify import verify

    pairs = load_eval_set(2, max_images=2)

    def exact(x):  # an export computes the student's output clamped to [0, 1]
        with torch.no_grad():
            return student(torch.from_numpy(x)).clamp(0, 1).numpy()

    def broken(x):  # a broken export: the residual over the nearest-neighbour anchor 20 % too strong, as a
        y = exact(x)  # wrong activation scale would make it
        anchor = x.repeat(2, axis=2).repeat(2, axis=3)
        return anchor + 1.2 * (y - anchor)

    good = verify(exact, student, pairs, 2, None, "int8", "test runtime")
    assert good["verified"] and good["delta_psnr_y"] == 0 and good["tolerance_db"] == 0.3
    bad = verify(broken, student, pairs, 2, None, "int8", "test runtime")
    assert bad["psnr_vs_torch"] >= 30  # the old int8 rule (psnr_vs_torch >= 30 dB) let this through ...
    assert bad["delta_psnr_y"] < -0.5  # ... with half a dB or more lost
    assert not bad["verified"] and "outside the int8 tolerance" in bad["reason"]
    shifted = verify(lambda x: exact(x) + 1 / 255, student, pairs, 2, None, "int8", "test runtime")
    assert shifted["verified"] and shifted["delta_psnr_y"] < -0.01  # one 8-bit level of offset: within int8's
    assert not verify(lambda x: exact(x) + 1 / 255, student, pairs, 2, None, "fp32", "t")["verified"]  # not fp32's


def test_verification_records_each_image(student):
    """``per_image`` holds each eval image's Y-PSNR of file and student, so a loss concentrated on one image (an
    int8 file on a near-lossless one, BENCHMARKS 31) can be seen; the headline figures are their means."""
    from sr_shrink.export.verify import verify

    pairs = load_eval_set(2, max_images=3)

    def one_image_worse(x):  # the student's output, one 8-bit level brighter on the second image only
        with torch.no_grad():
            y = student(torch.from_numpy(x)).clamp(0, 1).numpy()
        return y + (1 / 255 if np.array_equal(x[0], pairs[1].lr.numpy()) else 0)

    v = verify(one_image_worse, student, pairs, 2, None, "int8", "test runtime")
    per = v["per_image"]
    assert list(per) == [p.name for p in pairs]
    deltas = {n: r["psnr_y"] - r["torch_psnr_y"] for n, r in per.items()}
    assert deltas[pairs[0].name] == deltas[pairs[2].name] == 0 and deltas[pairs[1].name] < -0.01
    assert v["psnr_y"] == pytest.approx(sum(r["psnr_y"] for r in per.values()) / 3, abs=1e-3)
    assert v["torch_psnr_y"] == pytest.approx(sum(r["torch_psnr_y"] for r in per.values()) / 3, abs=1e-3)


def test_export_of_a_perturbed_model_is_not_verified(run, monkeypatch):
    """A file that does not compute what the student computes (here: noise added to its last conv before
    conversion) is exported, checked, and recorded as not verified, with the measured delta."""
    import dataclasses

    from sr_shrink.export import targets

    fmt = targets.TARGETS["onnx"]

    def perturbed_export(model, path, cfg, calib, meta):
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            model.tail.weight.add_(torch.randn(model.tail.weight.shape, generator=gen) * 0.05)
        return fmt.export(model, path, cfg, calib, meta)

    monkeypatch.setitem(targets.TARGETS, "onnx", dataclasses.replace(fmt, export=perturbed_export))
    out = run / "ex_perturbed"
    e = export_run(run, "onnx", stage=2, precision="int8", out=out, **FAST)[0]
    v = e["verification"]
    assert not e["verified"] and abs(v["delta_psnr_y"]) > v["tolerance_db"] == 0.3
    assert "outside the int8 tolerance of 0.3 dB" in v["reason"]
    on_disk = json.loads((out / "export.json").read_text())["exports"][0]
    assert on_disk["verified"] is False and on_disk["verification"]["delta_psnr_y"] == v["delta_psnr_y"]
    assert {"psnr_vs_torch", "max_abs_err", "tolerance_db"} <= on_disk["verification"].keys()


# ---------------------------------------------------------------- graph checks


def _rank6_onnx(path: Path) -> Path:
    """The textbook pixel shuffle: Reshape to rank 6, Transpose, Reshape back."""
    shape6 = helper.make_tensor("s6", TensorProto.INT64, [6], [1, 3, 2, 2, 4, 4])
    shape4 = helper.make_tensor("s4", TensorProto.INT64, [4], [1, 3, 8, 8])
    nodes = [helper.make_node("Reshape", ["x", "s6"], ["r6"]),
             helper.make_node("Transpose", ["r6"], ["t6"], perm=[0, 1, 4, 2, 5, 3]),
             helper.make_node("Reshape", ["t6", "s4"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 12, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [shape6, shape4])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_check_graph_rejects_rank6_tensor(tmp_path):
    info = onnx_graph(_rank6_onnx(tmp_path / "r6.onnx"))
    assert info.max_rank == 6 and info.high_rank
    with pytest.raises(SRShrinkError, match="rank > 4"):
        check_graph("onnx", info)


def test_check_graph_rejects_foreign_op(exported):
    info = onnx_graph(Path(exported("onnx", "fp32")["path"]))
    assert check_graph("onnx", info)["rank_ok"]
    info.ops["Tile"] = 1
    with pytest.raises(SRShrinkError, match="allow-list: Tile"):
        check_graph("onnx", info)


def test_export_refuses_and_removes_a_graph_that_fails_checks(run, monkeypatch):
    import dataclasses

    from sr_shrink.export import targets

    narrow = dataclasses.replace(targets.TARGETS["onnx"], allowed_ops=frozenset({"Conv", "Relu", "Add"}))
    monkeypatch.setitem(targets.TARGETS, "onnx", narrow)
    with pytest.raises(SRShrinkError, match="DepthToSpace"):
        export_run(run, "onnx", stage=1, out=run / "ex_refused", **FAST)
    assert not (run / "ex_refused" / "stage_01_fp32.onnx").exists()


# ---------------------------------------------------------------- export.json, run dirs, calibration


def test_export_json_merges_entries(run):
    out = run / "ex_merge"
    export_run(run, "onnx", stage="all", out=out, **FAST)
    first = json.loads((out / "export.json").read_text())
    assert [e["file"] for e in first["exports"]] == ["stage_01_fp32.onnx", "stage_02_fp32.onnx"]
    export_run(run, "onnx", stage=1, out=out, **FAST)
    again = json.loads((out / "export.json").read_text())
    assert len(again["exports"]) == 2 and again["run"]["scale"] == 2 and again["run"]["teacher_psnr_y"] == 33.0
    e = again["exports"][0]
    for key in ("target", "precision", "layout", "shape_policy", "size_bytes", "ops", "verification", "stage"):
        assert key in e
    assert "path" not in e  # export.json stays relocatable: names relative to its folder


def test_single_stage_file_and_default_out(tmp_path):
    run = make_tiny_run(tmp_path / "r", n_stages=1)
    entries = export_run(run / "stage_01.pt", "onnx", **FAST)
    assert entries[0]["stage"] == 1 and (run / "exports" / "stage_01_fp32.onnx").is_file()
    assert (run / "exports" / "export.json").is_file()


def test_calibration_from_generator(tmp_path):
    from sr_shrink.distill.generator import Generator, save_generator

    run = make_tiny_run(tmp_path / "g", n_stages=1)
    with pytest.raises(SRShrinkError, match="--calib DIR"):
        export_run(run, "onnx", precision="int8", calib="generator", **FAST)
    torch.manual_seed(0)
    gen = Generator(z_dim=8, patch=8, width=8)
    with torch.no_grad():
        gen.up[-1].weight.mul_(30)  # an untrained G outputs ~0.5 everywhere; spread it over [0, 1]
    save_generator(gen, run / "generator.pt")
    e = export_run(run, "onnx", precision="int8", **FAST)[0]
    assert e["calibration"]["source"] == "generator" and e["calibration"]["input_shape"] == [3, 8, 8]
    assert e["verified"]


@pytest.mark.parametrize("damage", ["truncated", "junk"])
def test_an_unreadable_generator_is_named_before_any_write_or_set_aside_with_a_note(tmp_path, tiny_eval, damage):
    """A run whose generator.pt was cut short or overwritten: int8 export used to start calibrating on it and fail
    with 'damaged generator checkpoint (...).', saying nothing of what to do (--qat the same). --calib generator
    now fails with one line naming the file and the other sources, before anything is written; the default source
    goes on as for a run without generator.pt (the bundled eval images; QAT on synthetic inputs), with a note."""
    from sr_shrink.distill.generator import RefineGenerator, save_generator

    run = make_tiny_run(tmp_path / "g", n_stages=1)
    gen = save_generator(RefineGenerator(patch=8), run / "generator.pt")
    gen.write_bytes(gen.read_bytes()[:300] if damage == "truncated" else b"\x00junk" * 50)
    args = ["export", str(run), "--target", "onnx", "--precision", "int8", "--calib-samples", "4", "--eval",
            str(tiny_eval)]
    res = CliRunner().invoke(main, [*args, "--calib", "generator"])
    line = one_error_line(res)
    assert line.startswith(f"error: {gen}: damaged generator checkpoint (")
    assert line.endswith("); pass --calib DIR with a folder of photos, or leave --calib out to calibrate on the "
                          "bundled eval images.")
    assert not (run / "exports").exists()
    res = CliRunner().invoke(main, [*args, "--qat", "2"])
    assert res.exit_code == 0, res.output
    notes = [line for line in res.output.splitlines() if line.startswith("note:")]
    assert notes[0].startswith(f"note: {gen}: damaged generator checkpoint (")
    assert notes[0].endswith("); this export calibrates on the bundled eval images and fine-tunes (--qat) on "
                             "synthetic inputs alone instead, as for a run without generator.pt.")
    (e,) = json.loads((run / "exports" / "export.json").read_text())["exports"]
    assert e["calibration"]["source"] == "images"
    assert e["calibration"]["note"] == "default: the run's generator.pt cannot be read"
    assert "generator.pt" not in e["qat"]["inputs"]["source"] and e["qat"]["inputs"]["synthetic_share"] == 1.0


def test_calibration_from_the_runs_synthetic_sources(tmp_path, tiny_eval):
    """``--calib synthetic``: data-free calibration for a run without generator.pt (``--mix 1``), apart from the
    images the file is verified on: the run's recorded synthetic sources (a teacher-grown kind by its base
    source) at its LR patch size, tiled to a fixed input size or as they are for a free-size graph."""
    from sr_shrink.export.calib import calib_inputs, calib_source

    run = make_tiny_run(tmp_path / "s", n_stages=1)
    args = ["export", str(run), "--target", "onnx", "--precision", "int8", "--calib", "synthetic", "--eval",
            str(tiny_eval)]
    assert one_error_line(CliRunner().invoke(main, args)) == (
        f"error: {run}: --calib synthetic needs a datafree run whose run.json records its synthetic sources "
        "(--synthetic, --lr-patch), which this run lacks; pass --calib DIR with a folder of photos instead.")
    record = json.loads((run / "run.json").read_text())
    record["config"] = {"mode": "datafree", "mix": 1.0, "lr_patch": 8,  # a source this version lacks is left out
                        "synthetic": "grown-deadleaves,smooth,deadleaves,retired"}
    (run / "run.json").write_text(json.dumps(record))
    src = calib_source(RunDir.open(run), "synthetic")
    assert (src.kind, src.kinds, src.patch) == ("synthetic", ("deadleaves", "smooth"), 8)
    fixed = calib_inputs(src, 2, 3, (20, 36), seed=0)
    assert len(fixed) == 3 and all(x.shape == (1, 3, 20, 36) for x in fixed)
    assert all(0 <= float(x.min()) and float(x.max()) <= 1 and float(x.std()) > 0.01 for x in fixed)
    free = calib_inputs(src, 2, 2, None, seed=0)
    assert len(free) == 2 * 96 * 96 // 64 and all(x.shape == (1, 3, 8, 8) for x in free)
    res = CliRunner().invoke(main, [*args, "--calib-samples", "4"])
    assert res.exit_code == 0, res.output
    (e,) = json.loads((run / "exports" / "export.json").read_text())["exports"]
    assert e["calibration"] == {"source": "synthetic", "path": str(run), "kinds": "deadleaves,smooth", "lr_patch": 8,
                                "samples": 4 * 96 * 96 // 64, "seed": 0, "input_shape": [3, 8, 8]}
    assert e["verified"]
    record["config"]["mix"] = 0  # the generator's samples alone: no synthetic share to render
    (run / "run.json").write_text(json.dumps(record))
    with pytest.raises(SRShrinkError, match="--calib synthetic needs a datafree run"):
        calib_source(RunDir.open(run), "synthetic")


def test_calibration_from_refine_generator_at_any_size(tmp_path):
    from sr_shrink.distill.generator import RefineGenerator, save_generator
    from sr_shrink.export.calib import CalibSource, calib_inputs

    run = make_tiny_run(tmp_path / "g", n_stages=1)
    save_generator(RefineGenerator(patch=8), run / "generator.pt")
    xs = calib_inputs(CalibSource("generator", run / "generator.pt"), 2, 3, (20, 36), seed=0)
    assert len(xs) == 3 and all(x.shape == (1, 3, 20, 36) for x in xs)
    assert all(0 <= float(x.min()) and float(x.max()) <= 1 and float(x.std()) > 0.01 for x in xs)
    e = export_run(run, "onnx", precision="int8", **FAST)[0]
    assert e["calibration"]["source"] == "generator" and e["verified"]


def test_calibration_inputs_are_made_once_per_request(tmp_path):
    """bench exports stage after stage: the same calibration request reuses the inputs already made, and a
    changed generator file (or another seed) makes new ones."""
    from sr_shrink.distill.generator import RefineGenerator, save_generator
    from sr_shrink.export.calib import CalibSource, calib_inputs

    path = tmp_path / "generator.pt"
    save_generator(RefineGenerator(patch=8), path)
    src = CalibSource("generator", path)
    first = calib_inputs(src, 2, 3, (20, 36), seed=0)
    again = calib_inputs(src, 2, 3, (20, 36), seed=0)
    assert all(a is b for a, b in zip(first, again, strict=True))
    assert not any(a is b for a, b in zip(first, calib_inputs(src, 2, 3, (20, 36), seed=1), strict=True))
    torch.manual_seed(1)
    save_generator(RefineGenerator(patch=8), path)  # other weights: sampled anew
    fresh = calib_inputs(src, 2, 3, (20, 36), seed=0)
    assert not any(a is b for a, b in zip(first, fresh, strict=True))


def test_mosaic_tiles_patches_in_order():
    patches = torch.arange(6, dtype=torch.float32).view(6, 1, 1, 1).expand(6, 3, 2, 2)
    m = mosaic(patches, (4, 5))
    assert m.shape == (1, 3, 4, 5)
    assert m[0, 0, 0].tolist() == [0, 0, 1, 1, 2] and m[0, 0, 3].tolist() == [3, 3, 4, 4, 5]


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("target,module,extra", [("onnx", "onnxscript", "onnx"), ("coreml", "coremltools", "coreml"),
                                                 ("tflite", "litert_torch", "tflite")])
def test_missing_extra_is_one_clear_line(run, monkeypatch, target, module, extra):
    monkeypatch.setitem(sys.modules, module, None)  # makes "import module" raise ImportError
    with pytest.raises(SRShrinkError) as err:
        export_run(run, target, stage=1, out=run / "ex_none", **FAST)
    msg = str(err.value)
    assert f"pip install 'sr-shrink[{extra}]'" in msg and module in msg and "\n" not in msg


def test_missing_stage_and_bad_run_dir(run, tmp_path):
    with pytest.raises(SRShrinkError, match="no stage 7; this run has stage\\(s\\) 1, 2"):
        export_run(run, "onnx", stage=7)
    with pytest.raises(SRShrinkError, match="no such run directory"):
        export_run(tmp_path / "nope", "onnx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SRShrinkError, match="not a distill run"):
        export_run(tmp_path / "empty", "onnx")
    with pytest.raises(SRShrinkError, match="unknown export target"):
        export_run(run, "caffe")
    with pytest.raises(SRShrinkError, match="--palettize applies to Core ML only"):
        export_run(run, "onnx", palettize=4)


def test_cli_errors_are_one_line(run, tmp_path):
    cli = CliRunner()
    res = cli.invoke(main, ["export", str(run), "--target", "caffe"])
    assert res.exit_code == 2 and "Invalid value for '--target'" in res.output
    res = cli.invoke(main, ["export", str(run), "--target", "onnx", "--stage", "9"])
    assert res.exit_code == 2 and res.output.strip().count("\n") == 0 and "no stage 9" in res.output
    (tmp_path / "junk").write_text("not a checkpoint")
    res = cli.invoke(main, ["export", str(tmp_path / "junk"), "--target", "onnx"])
    assert res.exit_code == 2 and res.output.startswith("error: ") and res.output.strip().count("\n") == 0


def test_an_unreadable_stage_file_fails_before_any_export_is_written(tiny_run):
    """A run whose stage_02.pt was cut short: export used to write stage 1's file and then fail with a checkpoint
    error that did not say what to do."""
    path = tiny_run / "stage_02.pt"
    path.write_bytes(path.read_bytes()[:200])
    res = CliRunner().invoke(main, ["export", str(tiny_run), "--target", "onnx"])
    line = one_error_line(res)
    assert line.startswith(f"error: {path}: not a readable sr-shrink checkpoint (")
    assert line.endswith(f"; rerun `sr-shrink distill ... --out {tiny_run} --resume` with the run's teacher and "
                          "options to train stage 2 and the stages after it again.")
    assert not (tiny_run / "exports").exists()


@pytest.mark.parametrize("eval_folder", ["missing", "empty", "tiny images"])
def test_a_bad_eval_folder_fails_before_any_export_is_written(tiny_run, tmp_path, eval_folder):
    """--eval naming no folder, one with no images or with images too small to verify on was found only after
    stage 1's file had been written (and left there, in no export.json)."""
    folder = tmp_path / eval_folder
    if eval_folder != "missing":
        folder.mkdir()
    if eval_folder == "tiny images":
        Image.new("RGB", (3, 2)).save(folder / "dot.png")
    says = {"missing": "not a folder of images", "empty": "holds no images (.png, .jpg",
            "tiny images": "image too small for x2 evaluation"}[eval_folder]
    line = one_error_line(CliRunner().invoke(main, ["export", str(tiny_run), "--target", "onnx", "--eval",
                                                    str(folder)]))
    assert line.startswith("error: ") and says in line, line
    assert not (tiny_run / "exports").exists()


def test_cli_export_writes_files(run):
    out = run / "ex_cli"
    res = CliRunner().invoke(main, ["export", str(run), "--target", "onnx", "--stage", "1", "--precision", "fp16",
                                    "--out", str(out), "--input-size", "32x32"])
    assert res.exit_code == 0, res.output
    assert (out / "stage_01_fp16.onnx").is_file() and "stage_01_fp16.onnx" in res.output
    entry = json.loads((out / "export.json").read_text())["exports"][0]
    assert entry["input_size"] == [32, 32] and entry["verified"]


def test_an_export_stopped_at_a_later_stage_keeps_the_files_it_finished(tmp_path, monkeypatch):
    """Each file is indexed in export.json when it is done, under its own name only once written and verified: a
    Ctrl-C in stage 2 keeps stage 1's file and entry, leaves no partial file of its own (and removes one a killed
    export left, not one of a live process), and stage 2's older file and entry (an earlier export) as they were."""
    import sr_shrink.export.pipeline as pipeline

    run = make_tiny_run(tmp_path / "run", n_stages=2)
    fast = dict(eval_images=1, input_size=(16, 16))
    export_run(run, "onnx", stage=2, **fast)
    older = (run / "exports" / "stage_02_fp32.onnx").read_bytes()
    real_verify = pipeline._verify

    def verify(job, path, student):
        if student.n_blocks == 2:  # stage 2
            raise KeyboardInterrupt
        return real_verify(job, path, student)

    monkeypatch.setattr(pipeline, "_verify", verify)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid no process has now
    (run / "exports" / f".partial-{dead.pid}-stage_02_fp32.onnx").write_bytes(b"left by an export killed outright")
    (run / "exports" / f".partial-{dead.pid}-stage_01_fp16.tflite").write_bytes(b"so was this, of another file")
    (run / "exports" / f".partial-{os.getppid()}-stage_02_fp32.onnx").mkdir()  # another export's, running: kept
    said: list[str] = []
    with pytest.raises(KeyboardInterrupt):
        export_run(run, "onnx", stage="all", log=said.append, **fast)
    assert said == [pipeline.kept_note([{"file": "stage_01_fp32.onnx"}], run / "exports")], said
    assert "stage_01_fp32.onnx finished and kept in" in said[0] and "stage_02" not in said[0]
    names = sorted(p.name for p in (run / "exports").iterdir())
    assert names == [f".partial-{os.getppid()}-stage_02_fp32.onnx", "export.json", "stage_01_fp32.onnx",
                     "stage_02_fp32.onnx"], names
    assert (run / "exports" / "stage_02_fp32.onnx").read_bytes() == older
    entries = {e["file"]: e for e in RunDir.open(run).read_index()["exports"]}
    assert sorted(entries) == ["stage_01_fp32.onnx", "stage_02_fp32.onnx"]
    assert entries["stage_01_fp32.onnx"]["verified"] and entries["stage_01_fp32.onnx"]["stage"] == 1
    assert entries["stage_01_fp32.onnx"]["size_bytes"] == (run / "exports" / "stage_01_fp32.onnx").stat().st_size

    said.clear()  # stopped in its first file: nothing finished, nothing to say beyond "interrupted"
    with pytest.raises(KeyboardInterrupt):
        export_run(run, "onnx", stage=2, log=said.append, **fast)
    assert said == []

    monkeypatch.setattr(pipeline, "_verify", real_verify)
    entries = export_run(run, "onnx", stage="all", **fast)
    assert [e["file"] for e in entries] == ["stage_01_fp32.onnx", "stage_02_fp32.onnx"]
    assert entries[1]["path"] == str((run / "exports" / "stage_02_fp32.onnx").resolve())
    assert [p.name for p in (run / "exports").iterdir() if p.name.startswith(".partial-")] == [
        f".partial-{os.getppid()}-stage_02_fp32.onnx"]


def test_an_error_about_the_file_being_written_names_its_own_name(tmp_path, monkeypatch):
    """A writer or runner that fails names the path it was given, the hidden partial one: the error names the
    file the user asked for, and no partial file is left."""
    import sr_shrink.export.pipeline as pipeline

    run = make_tiny_run(tmp_path / "run", n_stages=1)

    def verify(job, path, student):
        raise SRShrinkError(f"{path}: running it once failed (a broken runtime); {path.name} kept nothing")

    monkeypatch.setattr(pipeline, "_verify", verify)
    with pytest.raises(SRShrinkError) as err:
        export_run(run, "onnx", stage=1, eval_images=1, input_size=(16, 16))
    final = run / "exports" / "stage_01_fp32.onnx"
    assert str(err.value) == f"{final}: running it once failed (a broken runtime); stage_01_fp32.onnx kept nothing"
    assert ".partial-" not in str(err.value) and list((run / "exports").iterdir()) == []
