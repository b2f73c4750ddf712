"""The ONNX int8 scheme's opt-in changes: ``--no-reduce-range`` (full-range weights) and ``--float-stream`` (the
residual stream float between the int8 convs), in the file, in export.json and in QAT's mirror of the scheme."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from conftest import make_tiny_run
from onnx import numpy_helper

from sr_shrink.export.onnx import ort_optimized_ops
from sr_shrink.export.qat import QATStudent
from sr_shrink.models.student import load_student


def _weight_levels(path: str) -> list[int]:
    """Return the largest |level| of each 4-D int8 weight initializer (one per quantized conv)."""
    m = onnx.load(path)
    return [int(np.abs(numpy_helper.to_array(t).astype(np.int32)).max()) for t in m.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]


def _stream_reads(path: str) -> int:
    """Return how many Add inputs read a rounded copy (DequantizeLinear of QuantizeLinear) of what another Add
    or a float conv wrote, i.e. how often the residual stream is summed rounded."""
    g = onnx.load(path).graph
    producer = {o: n for n in g.node for o in n.output}
    count = 0
    for n in g.node:
        for name in n.input if n.op_type == "Add" else ():
            dq = producer.get(name)
            if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in producer:
                continue
            src = producer.get(producer[dq.input[0]].input[0])
            float_conv = src is not None and src.op_type == "Conv" and (
                src.input[0] not in producer or producer[src.input[0]].op_type != "DequantizeLinear")
            if src is not None and (src.op_type == "Add" or float_conv):
                count += 1
    return count


def test_full_range_weights_use_all_127_levels(exported):
    default, full = exported("onnx", "int8"), exported("onnx", "int8", reduce_range=False)
    assert _weight_levels(default["path"]) and max(_weight_levels(default["path"])) <= 64  # 7-bit by default
    assert set(_weight_levels(full["path"])) == {127}  # symmetric per channel: each conv's top channel hits 127
    assert "full range [-127, 127]" in full["quantization"]["weights"] and full["verified"]
    assert "7-bit" in default["quantization"]["weights"]


def test_float_stream_sums_the_stream_in_float_and_keeps_every_int8_conv(exported):
    default, fs = exported("onnx", "int8"), exported("onnx", "int8", float_stream=True)
    assert _stream_reads(default["path"]) > 0  # negative control: by default the Adds sum the rounded stream
    assert _stream_reads(fs["path"]) == 0
    assert "residual_stream" in fs["quantization"] and "residual_stream" not in default["quantization"]
    adds = [n.name for n in onnx.load(fs["path"]).graph.node if n.op_type == "Add"]
    assert set(adds) <= set(fs["quantization"]["float_nodes"])
    ops_default, ops_fs = ort_optimized_ops(default["path"]), ort_optimized_ops(fs["path"])
    assert ops_fs.get("QLinearConv", 0) == ops_default.get("QLinearConv", 0) > 0  # no conv fell back to float
    assert fs["verified"]


def test_qat_mirrors_the_float_stream(tmp_path):
    st, _ = load_student(make_tiny_run(tmp_path / "r", n_stages=2) / "stage_02.pt")
    x = torch.rand(2, 3, 12, 12)
    rounded, floating = QATStudent(st).train(), QATStudent(st, float_stream=True).train()
    rounded(x), floating(x)
    assert all(bool(q.seen) for q in rounded.q_add)
    # float stream: the last block's sum feeds only the float tail, so nothing rounds it; earlier sums are
    # rounded once, as the next block's conv input
    assert [bool(q.seen) for q in floating.q_add] == [True] * (st.n_blocks - 1) + [False]
    assert not torch.equal(rounded.eval()(x), floating.eval()(x))


def test_each_target_record_derives_its_own_int8_scheme():
    from sr_shrink.export.onnx import INT8_SCHEME
    from sr_shrink.export.options import ExportConfig
    from sr_shrink.export.targets import get_target

    onnx_target = get_target("onnx")
    assert onnx_target.scheme_for(ExportConfig("onnx", "int8")) == INT8_SCHEME
    changed = onnx_target.scheme_for(ExportConfig("onnx", "int8", reduce_range=False, float_stream=True))
    assert (changed.reduce_range, changed.float_stream) == (False, True)
    assert changed.record() != INT8_SCHEME.record()
    assert get_target("tflite").scheme_for(ExportConfig("tflite", "int8")) is None


def _initializers(path: str) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}


def test_tail_refit_changes_only_the_float_tail_and_fits_it_closer(exported):
    """--tail-refit rewrites the tail conv's float weights and bias and nothing else; on the calibration inputs
    the refitted tail is closer to the fp32 student's tail output than the student's own weights were."""
    from sr_shrink.export.onnx import tail_convs

    default, refit = exported("onnx", "int8", tail_refit=False), exported("onnx", "int8")  # on by default
    (rec,) = refit["quantization"]["tail_refit"]
    assert "tail_refit" not in default["quantization"] and "tail" in refit["quantization"]
    assert 0 < rec["rms_after"] < rec["rms_before"] and rec["pixels"] > 0
    a, b = _initializers(default["path"]), _initializers(refit["path"])
    changed = {k for k in a if not np.array_equal(a[k], b[k])}
    (tail,) = tail_convs(onnx.load(refit["path"]))
    node = next(n for n in onnx.load(refit["path"]).graph.node if n.name == tail)
    assert changed == set(node.input[1:3]) and a.keys() == b.keys()  # the tail's weight and bias only
    assert refit["verified"]


def test_refit_tail_recovers_a_tail_from_an_exact_stream(exported, tmp_path):
    """With the float model's own stream as input (no rounding), refitting a perturbed tail gives back the
    student's tail: the least squares sees the conv's patches in the conv's own order, padding and bias."""
    from sr_shrink.export.onnx import tail_convs
    from sr_shrink.export.refit import refit_tail

    fp = onnx.load(exported("onnx", "fp32")["path"])
    (tail,) = tail_convs(fp)
    node = next(n for n in fp.graph.node if n.name == tail)
    moved = onnx.ModelProto()
    moved.CopyFrom(fp)
    inits = {t.name: t for t in moved.graph.initializer}
    original = {k: numpy_helper.to_array(inits[k]).copy() for k in node.input[1:3]}
    rng = np.random.default_rng(0)
    for k, v in original.items():
        inits[k].CopyFrom(numpy_helper.from_array((v + rng.normal(0, 0.1, v.shape)).astype(np.float32), k))
    arrays = [rng.random((1, 3, 11, 13), dtype=np.float32) for _ in range(4)]
    rec = refit_tail(moved, fp, tail, arrays, ridge=0.0)
    assert rec["rms_before"] > 1e-3 and rec["rms_after"] < 1e-5
    for k, v in original.items():
        np.testing.assert_allclose(numpy_helper.to_array(inits[k]), v, atol=1e-4)


def _first_conv_input(path: str, name: str) -> str:
    """Return the op type that writes the input of the conv ``name`` in the file at ``path``."""
    g = onnx.load(path).graph
    producer = {o: n for n in g.node for o in n.output}
    (node,) = [n for n in g.node if n.name == name]
    return producer[node.input[0]].op_type


@pytest.mark.parametrize("float_stream", [False, True])
def test_float_first_conv_reads_the_head_unrounded(exported, float_stream):
    """--float-first-conv: the first body conv stays float and reads the head's output itself (with the int8
    stream too, where the first Add still sums a rounded copy); one QLinearConv fewer; recorded in export.json."""
    from sr_shrink.export.onnx import first_body_convs

    (name,) = first_body_convs(onnx.load(exported("onnx", "fp32")["path"]))
    base = exported("onnx", "int8", float_stream=float_stream, reduce_range=False)
    first = exported("onnx", "int8", float_stream=float_stream, reduce_range=False, float_first_conv=True)
    assert _first_conv_input(base["path"], name) == "DequantizeLinear"  # negative control: a rounded copy
    assert _first_conv_input(first["path"], name) == "Conv"  # the float head
    ops_base, ops_first = ort_optimized_ops(base["path"]), ort_optimized_ops(first["path"])
    assert ops_first.get("QLinearConv", 0) == ops_base.get("QLinearConv", 0) - 1 > 0
    assert "first_body_conv" in first["quantization"] and "first_body_conv" not in base["quantization"]
    assert len(first["quantization"]["float_nodes"]) == len(base["quantization"]["float_nodes"]) + 1
    assert first["verified"]


def test_qat_and_bias_correction_mirror_the_float_first_conv(tmp_path, monkeypatch):
    import sr_shrink.export.qat as qat
    from sr_shrink.export.biascorr import correct_bias

    st, _ = load_student(make_tiny_run(tmp_path / "r", n_stages=2) / "stage_02.pt")
    x = torch.rand(2, 3, 12, 12)
    rounded = QATStudent(st, float_ends=True, float_stream=True).train()
    first = QATStudent(st, float_ends=True, float_stream=True, float_first=True).train()
    rounded(x), first(x)
    assert bool(rounded.q_head.seen) and not first.q_head.enabled  # the head's output is rounded for nobody
    convs = [c for c, _ in first.quantized_convs()]
    assert st.body[0].conv1 not in convs and first.net.body[0].conv1 not in convs
    assert len(convs) == len(rounded.quantized_convs()) - 1
    # the first conv reads the head's float output with float weights
    calls = {}
    conv = qat._conv
    monkeypatch.setattr(qat, "_conv", lambda c, inp, qmax=127: calls.setdefault(c, (inp, qmax)) and conv(c, inp, qmax))
    first.eval()(x)
    inp, qmax = calls[first.net.body[0].conv1]
    with torch.no_grad():
        assert qmax is None and torch.equal(inp, first.net.head(x))
    assert calls[first.net.body[0].conv2][1] == 127 and calls[first.net.body[1].conv1][1] == 127
    calib = [torch.rand(1, 3, 16, 16) for _ in range(2)]
    _, rec_all = correct_bias(st, calib, qmax=127, ends=False)
    fixed, rec = correct_bias(st, calib, qmax=127, ends=False, first=False)
    assert rec["convs"] == rec_all["convs"] - 1
    assert torch.equal(fixed.body[0].conv1.bias, st.body[0].conv1.bias)  # a float conv's bias is left as it was
