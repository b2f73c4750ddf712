"""Tail refit for ONNX int8 files: the float tail conv, refitted to the quantized body it reads.

The ONNX int8 scheme keeps the tail 3x3 conv (the stream -> ``3 * scale**2`` residual channels before the pixel
shuffle) in float. In the quantized file it reads the residual stream as the int8 body leaves it, not as the fp32
student's body does, and the part of that difference a linear map can undo (range clipping, rounding that leans
one way, channels that move together) reaches the output through the tail's unchanged weights. The tail is linear
in its input, so its weights and bias can be refitted in closed form (ridge least squares) to map the file's own
stream onto the fp32 tail's output on the calibration inputs:

    W = argmin ||P_q W - Y||^2 + ridge * mean(diag(P_q' P_q)) * ||W - W_0||^2

with ``P_q`` the 3x3 patches (and a 1 for the bias) of the quantized stream, ``Y`` the fp32 student's tail output
and ``W_0`` the student's tail. The ridge term keeps channels the calibration inputs barely excite at their
original weights. Everything else in the file is untouched; the refitted tail stays float, so nothing is
rounded after it. Bias correction (:mod:`~sr_shrink.export.biascorr`) is the special case that refits the bias
alone, for the file's own weights' rounding; this one answers the activations' rounding too.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..deps import quiet

RIDGE = 1e-3  # relative to the mean diagonal of P'P; 0 and 1e-2 gave the same files within 0.0002 dB
STRIP_PIXELS = 32768  # output pixels per least-squares strip: bounds the float64 patch matrix at ~40 MB


def refit_tail(q_proto, fp_proto, tail: str, arrays: list[np.ndarray], ridge: float = RIDGE) -> dict:
    """Refit, in place, the float conv named ``tail`` of the quantized ONNX model ``q_proto`` so that on the
    calibration ``arrays`` (the model's input feeds) it maps the stream the quantized body gives it onto the
    output of the same conv in the float model ``fp_proto``. Return the export.json record: the calibration
    pixels used, and the tail output's RMS error against the float model's before and after the refit (or
    ``skipped`` with the reason, the file unchanged)."""
    from onnx import helper, numpy_helper

    q_node = next((n for n in q_proto.graph.node if n.name == tail and n.op_type == "Conv"), None)
    fp_node = next((n for n in fp_proto.graph.node if n.name == tail and n.op_type == "Conv"), None)
    inits = {t.name: t for t in q_proto.graph.initializer}
    if q_node is None or fp_node is None or q_node.input[1] not in inits:
        return {"skipped": f"no float conv {tail!r} in the quantized model"}
    attrs = {a.name: helper.get_attribute_value(a) for a in q_node.attribute}
    w0 = numpy_helper.to_array(inits[q_node.input[1]]).astype(np.float64)
    cout, cin, kh, kw = w0.shape
    pads = list(attrs.get("pads", [0, 0, 0, 0]))
    plain = (attrs.get("group", 1) == 1 and set(attrs.get("strides", [1, 1])) == {1}
             and set(attrs.get("dilations", [1, 1])) == {1} and kh == kw and kh % 2 == 1
             and pads == [kh // 2] * 4 and attrs.get("auto_pad", b"NOTSET") in (b"NOTSET", "NOTSET"))
    if not plain:
        return {"skipped": f"conv {tail!r} is not a plain stride-1 'same' conv"}
    has_bias = len(q_node.input) > 2 and q_node.input[2] in inits
    b0 = numpy_helper.to_array(inits[q_node.input[2]]).astype(np.float64) if has_bias else np.zeros(cout)

    (streams,) = zip(*_run(q_proto, [q_node.input[0]], arrays))
    targets = [o[0] for o in _run(fp_proto, [fp_node.output[0]], arrays)]
    d = cin * kh * kw + 1
    ata, aty, yty, n = np.zeros((d, d)), np.zeros((d, cout)), 0.0, 0
    for h, y in zip(streams, targets):
        for p, t in _patch_strips(h, y, kh):
            ata += p.T @ p
            aty += p.T @ t
            yty += float((t * t).sum())
            n += p.shape[0]
    theta0 = np.concatenate([w0.reshape(cout, -1).T, b0[None, :]], 0)
    reg = ridge * np.trace(ata) / d
    theta = np.linalg.solve(ata + reg * np.eye(d), aty + reg * theta0)

    def rms(th: np.ndarray) -> float:
        sse = yty - 2 * float((th * aty).sum()) + float((th * (ata @ th)).sum())
        return float(np.sqrt(max(sse, 0.0) / (n * cout)))

    inits[q_node.input[1]].CopyFrom(numpy_helper.from_array(
        theta[:-1].T.reshape(cout, cin, kh, kw).astype(np.float32), q_node.input[1]))
    bias = theta[-1].astype(np.float32)
    if has_bias:
        inits[q_node.input[2]].CopyFrom(numpy_helper.from_array(bias, q_node.input[2]))
    else:
        name = f"{tail}.refit_bias"
        q_proto.graph.initializer.append(numpy_helper.from_array(bias, name))
        q_node.input.append(name)
    return {"conv": tail, "pixels": n, "ridge": ridge, "rms_before": round(rms(theta0), 7),
            "rms_after": round(rms(theta), 7)}


def _run(proto, names: list[str], arrays: list[np.ndarray]) -> list[list[np.ndarray]]:
    """Return, for each feed in ``arrays``, the values of the tensors ``names`` of ``proto`` (run on 1 thread)."""
    import onnx
    import onnxruntime as ort

    from ..runtimes import ort_session_options

    probe = onnx.ModelProto()
    probe.CopyFrom(proto)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in names)
    with quiet():  # the session options the file runs with in verification, bench and upscale
        sess = ort.InferenceSession(probe.SerializeToString(), ort_session_options(1),
                                    providers=["CPUExecutionProvider"])
    feed = proto.graph.input[0].name
    return [sess.run(names, {feed: a}) for a in arrays]


def _patch_strips(h: np.ndarray, y: np.ndarray, k: int):
    """Yield (patches with a trailing 1, targets) of the stream ``h`` (N, C, H, W) and the conv output ``y``
    (N, Cout, H, W) in strips of rows, float64: each patch row is the k x k zero-padded window of one pixel."""
    hp = F.pad(torch.from_numpy(h).double(), (k // 2,) * 4)
    yt = torch.from_numpy(y).double()
    rows = max(1, STRIP_PIXELS // max(1, h.shape[0] * h.shape[3]))
    for r in range(0, h.shape[2], rows):
        strip = hp[:, :, r:r + min(rows, h.shape[2] - r) + k - 1]
        p = F.unfold(strip, (k, k)).permute(0, 2, 1).reshape(-1, h.shape[1] * k * k)
        t = yt[:, :, r:r + rows].permute(0, 2, 3, 1).reshape(-1, y.shape[1])
        yield torch.cat([p, torch.ones(p.shape[0], 1, dtype=p.dtype)], 1).numpy(), t.numpy()
