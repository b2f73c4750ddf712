"""ONNX export: ``torch.onnx.export(dynamo=True)``, opset 18, simplified by onnxslim.

Graph: Conv, Relu, Add and DepthToSpace (CRD), input ``lr`` (1,3,H,W) with free H/W unless a size is
fixed. fp16 converts weights and activations (I/O stay float32 with Cast nodes unless ``native_io``). int8 is
ONNX Runtime static QDQ (:class:`Int8Scheme`): uint8 activations and symmetric per-channel int8 weights in
[-64, 64]; the anchor conv, the last Add and DepthToSpace stay float so the exact nearest-neighbour anchor is
not rounded to 8 bits, and so do the first and last 3x3 convs (3 input / 12 output channels: ORT's int8
kernels are no faster than fp32 there, and the tail's rounding lands straight on the output).

Why this scheme (BENCHMARKS.md, section 9). On x86, ONNX Runtime fuses a QDQ Conv into QLinearConv (and a QDQ
Add into QLinearAdd, then runs the integer body in NHWC) only for uint8 activations, unless the CPU has
AVX-VNNI-class int8 support: with int8 activations half the convs stayed float Convs between
Quantize/DequantizeLinear pairs, and int8 ran 1.4x *slower* than fp32. uint8 x int8 products are summed in
pairs into int16 on AVX2 (``vpmaddubsw``), which saturates for full-range weights (255 * 127 * 2 > 32767; it
cost 0.6 dB on a 300-step student); 7-bit weights (``reduce_range``) keep every pair sum in range on any CPU.
Two opt-in changes trade that for accuracy (BENCHMARKS.md, section 19): ``--no-reduce-range`` writes full
[-127, 127] weights, for CPUs and NPUs that sum int8 products without saturating (ARM dot-product
instructions, x86 with VNNI, QNN), and ``--float-stream`` keeps the residual stream float between the int8
convs (:func:`float_stream_skips`), which costs latency where the Adds would have run in int8.
``--float-first-conv`` also keeps the first body conv float, reading the head's output unrounded
(:func:`first_body_convs`): that rounding is the one that costs the most (BENCHMARKS.md, section 33), and the conv
runs at fp32 speed.

w8a16 (:data:`W8A16_SCHEME`) is QDQ with uint16 activations and int8 weights, the A16W8 form NPU stacks
(QNN's HTP, ...) take; ONNX Runtime's CPU provider runs it unfused, as its float simulation.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..deps import quiet, require
from .graph import GraphInfo
from .refit import refit_tail
from .targets import Int8Option, Target
from .wrapper import MobileSR, example_input

if TYPE_CHECKING:
    from .options import ExportConfig

OPSET = 18
MAX_SIDE = 8192


def require_onnx(precision: str = "fp32") -> None:
    """Import what the ONNX export needs; a clear error naming the extra if something is missing."""
    mods = ["onnx", "onnxscript", "onnxslim", "onnxruntime"]
    if precision in ("int8", "w8a16"):
        mods.append("onnxruntime.quantization")
    require("onnx", *mods)


def export_onnx(model: MobileSR, path: Path, cfg: ExportConfig, calib: list[torch.Tensor] | None,
                meta: dict) -> dict:
    """Write ``model`` to ``path`` as ONNX in ``cfg.precision``; return the entry fields it sets."""
    import onnx

    proto = _to_onnx(model, cfg)
    extra: dict = {"opset": OPSET, "exporter": f"torch.onnx dynamo (torch {torch.__version__}) + onnxslim"}
    if cfg.precision == "fp16":
        proto = _to_fp16(proto, keep_io=not cfg.native_io)
    elif cfg.precision == "int8":
        proto, extra["quantization"] = to_int8(proto, calib, model.nhwc, TARGET.scheme_for(cfg))
    elif cfg.precision == "w8a16":
        proto, extra["quantization"] = to_int8(proto, calib, model.nhwc, W8A16_SCHEME)
    _set_metadata(proto, meta)
    onnx.save(proto, str(path))
    return extra


def _to_onnx(model: MobileSR, cfg: ExportConfig):
    import onnxslim

    x = example_input(cfg.input_size or (64, 80), cfg.layout)
    dyn = None
    if cfg.dynamic:
        h, w = torch.export.Dim("h", min=4, max=MAX_SIDE), torch.export.Dim("w", min=4, max=MAX_SIDE)
        dyn = {"lr": {1: h, 2: w} if cfg.layout == "nhwc" else {2: h, 3: w}}
    with quiet():
        prog = torch.onnx.export(model, (x,), dynamo=True, opset_version=OPSET, dynamic_shapes=dyn,
                                 input_names=["lr"], output_names=["sr"], verbose=False, report=False)
        proto = onnxslim.slim(prog.model_proto)
    return _name_nodes(proto)


def _name_nodes(proto):
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
    return proto


def _to_fp16(proto, keep_io: bool):
    from onnxruntime.transformers.float16 import convert_float_to_float16

    with quiet():
        return _name_nodes(convert_float_to_float16(proto, keep_io_types=keep_io))


def _shuffle_sources(g, producer: dict) -> list:
    """Return (the output clamp or None, the anchor Add) feeding each pixel shuffle (DepthToSpace or its
    ConvTranspose form) of graph ``g``."""
    found = []
    for n in g.node:
        if n.op_type in ("DepthToSpace", "ConvTranspose") and n.input[0] in producer:
            src = producer[n.input[0]]
            if src.op_type == "Clip" and src.input[0] in producer:
                found.append((src, producer[src.input[0]]))
            else:
                found.append((None, src))
    return found


def float_tail_nodes(proto) -> list[str]:
    """Return the names of the nodes int8 leaves in float: the 1x1 anchor conv on the input, the Add
    feeding the pixel shuffle, the output clamp between them, the pixel shuffle itself and any layout
    Transpose."""
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    names = [n.name for n in g.node if n.op_type in ("DepthToSpace", "ConvTranspose", "Transpose")]
    for clip, add in _shuffle_sources(g, producer):
        names += [add.name] + ([clip.name] if clip is not None else [])
    for n in g.node:
        if n.op_type == "Conv" and n.input[1] in inits and list(inits[n.input[1]].dims[2:]) == [1, 1]:
            names.append(n.name)
    return sorted(set(names))


def float_end_convs(proto) -> list[str]:
    """Return the names of the first and last 3x3 convs (the head on the RGB input, the tail producing the
    residual before the anchor Add): int8 keeps them float. ORT's int8 kernels are slower than its fp32 ones
    for their 3 input / 12 output channels, and their rounding costs the most dB (BENCHMARKS.md, section 9)."""
    g = proto.graph
    inits = {t.name: t for t in g.initializer}
    inputs = {i.name for i in g.input}
    inputs |= {o for n in g.node if n.op_type == "Transpose" and n.input[0] in inputs for o in n.output}
    names = [n.name for n in g.node if _is_3x3_conv(n, inits) and n.input[0] in inputs]
    return sorted(set(names + tail_convs(proto)))


def first_body_convs(proto) -> list[str]:
    """Return the names of the first body convs: the 3x3 convs other than the head and tail that read the head's
    output (the residual stream as the head writes it)."""
    g = proto.graph
    ends = set(float_end_convs(proto))  # the head and the tail convs
    heads = {o for n in g.node if n.name in ends - set(tail_convs(proto)) for o in n.output}
    inits = {t.name: t for t in g.initializer}
    return sorted(n.name for n in g.node if _is_3x3_conv(n, inits) and n.input[0] in heads and n.name not in ends)


def _is_3x3_conv(node, inits: dict) -> bool:
    """Return True for a Conv whose weight is the initializer of a spatial (not 1x1) kernel."""
    return node.op_type == "Conv" and node.input[1] in inits and list(inits[node.input[1]].dims[2:]) != [1, 1]


def tail_convs(proto) -> list[str]:
    """Return the names of the tail convs: the 3x3 (not 1x1) convs whose output the anchor Add before the pixel
    shuffle reads."""
    g = proto.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: t for t in g.initializer}
    names = []
    for _, add in _shuffle_sources(g, producer):
        names += [producer[i].name for i in add.input if i in producer and _is_3x3_conv(producer[i], inits)]
    return sorted(set(names))


# Activation ranges clip the rarest 0.01 % of values: on a 4-block student MinMax ranges lost 0.19 dB Y-PSNR,
# 99.99th-percentile ranges 0.09 dB, 99.999 0.12 dB, entropy 0.19 dB (BENCHMARKS.md, section 4).
CALIB_PERCENTILE = 99.99


class _Feed:
    """An onnxruntime CalibrationDataReader over a list of NCHW/NHWC float32 arrays."""

    def __init__(self, name: str, arrays: list[np.ndarray]):
        self._it = iter([{name: a} for a in arrays])

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        pass


@dataclass(frozen=True)
class Int8Scheme:
    """How :func:`to_int8` quantises: ``activations`` "uint8", "int8", "uint16" or "int16" (asymmetric, per
    tensor; ranges from the ``percentile`` of the calibration values, or min/max when it is None);
    ``reduce_range`` 7-bit weights (int8 in [-64, 64], symmetric, per channel; False: [-127, 127]);
    ``float_tail`` keeps the anchor conv, the last Add and DepthToSpace in float (:func:`float_tail_nodes`);
    ``float_end_convs`` the first and last 3x3 convs (:func:`float_end_convs`); ``float_first_conv`` the first
    body conv too, reading the head's output unrounded (:func:`first_body_convs`); ``float_stream`` keeps the
    residual stream float (every Add float, reading its float inputs, :func:`float_stream_skips`), so only the
    convs see a rounded copy of it; ``tail_refit`` refits the float tail conv to the quantized stream
    (:func:`~sr_shrink.export.refit.refit_tail`). The default is the int8 export's scheme (``sr-shrink export
    --no-reduce-range / --float-stream / --float-first-conv / --[no-]tail-refit`` change it, :meth:`with_options`);
    :data:`W8A16_SCHEME` the w8a16 one."""

    activations: str = "uint8"
    reduce_range: bool = True
    float_tail: bool = True
    float_end_convs: bool = True
    percentile: float | None = CALIB_PERCENTILE
    float_stream: bool = False
    tail_refit: bool = True
    float_first_conv: bool = False

    def with_options(self, reduce_range: bool | None = None, float_stream: bool = False,
                     tail_refit: bool | None = None, float_first_conv: bool = False) -> Int8Scheme:
        """Return this scheme with an export's ``--[no-]reduce-range``, ``--[no-]tail-refit`` (None: keep),
        ``--float-stream`` and ``--float-first-conv``."""
        return replace(self, reduce_range=self.reduce_range if reduce_range is None else reduce_range,
                       float_stream=self.float_stream or float_stream,
                       tail_refit=self.tail_refit if tail_refit is None else tail_refit,
                       float_first_conv=self.float_first_conv or float_first_conv)

    @property
    def refits_tail(self) -> bool:
        """Return True when the file's tail conv is float and refitted (``tail_refit`` needs ``float_end_convs``)."""
        return self.tail_refit and self.float_end_convs

    def record(self) -> dict:
        """Return the export.json description of the scheme."""
        bits = "7-bit range [-64, 64]" if self.reduce_range else "full range [-127, 127]"
        ranges = f"{self.percentile} percentile ranges" if self.percentile else "min/max ranges"
        rec = {"activations": f"{self.activations} (asymmetric, per tensor, {ranges})",
               "weights": f"int8 (symmetric, per channel, {bits})"}
        if self.float_stream:
            rec["residual_stream"] = "float (the Adds run in float; each conv reads a rounded copy)"
        if self.float_first_conv:
            rec["first_body_conv"] = "float (reads the head's output unrounded)"
        if self.refits_tail:
            rec["tail"] = "float, refitted by least squares to the quantized stream (export.refit)"
        return rec


INT8_SCHEME = Int8Scheme()
# w8a16: every conv and Add quantised (uint16 activations, as QNN's HTP and other NPU stacks take them); 16 bits
# need no clipping of rare values (min/max ranges) and no 7-bit weights (no CPU int8 kernel runs them). The exact
# anchor path stays float as in int8. ONNX Runtime's CPU provider has no 16-bit QLinearConv: it runs the file
# as Dequantize -> float Conv -> Quantize, i.e. the exact simulation of the quantised graph.
W8A16_SCHEME = Int8Scheme(activations="uint16", reduce_range=False, float_end_convs=False, percentile=None)


def to_int8(proto, calib: list[torch.Tensor], nhwc: bool, scheme: Int8Scheme = INT8_SCHEME):
    """Return (the QDQ int8 model of the float ``proto`` calibrated on ``calib``, its export.json record)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    arrays = [(c.permute(0, 2, 3, 1) if nhwc else c).numpy().astype(np.float32) for c in calib]
    adds = [n.name for n in proto.graph.node if n.op_type == "Add"]
    first = first_body_convs(proto) if scheme.float_first_conv else []
    keep_float = sorted(set((float_tail_nodes(proto) if scheme.float_tail else [])
                            + (float_end_convs(proto) if scheme.float_end_convs else [])
                            + (adds if scheme.float_stream else []) + first))
    act = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8, "uint16": QuantType.QUInt16,
           "int16": QuantType.QInt16}[scheme.activations]
    calib_opts = ({"calibrate_method": CalibrationMethod.Percentile,
                   "extra_options": {"CalibPercentile": scheme.percentile}} if scheme.percentile else
                  {"calibrate_method": CalibrationMethod.MinMax, "extra_options": {}})
    with tempfile.TemporaryDirectory() as tmp, quiet():
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, str(src))
        quantize_static(str(src), str(dst), _Feed(proto.graph.input[0].name, arrays),
                        quant_format=QuantFormat.QDQ, activation_type=act, weight_type=QuantType.QInt8,
                        per_channel=True, reduce_range=scheme.reduce_range, nodes_to_exclude=keep_float,
                        calibrate_method=calib_opts["calibrate_method"],
                        extra_options={"WeightSymmetric": True, "ActivationSymmetric": False,
                                       **calib_opts["extra_options"]})
        out = onnx.load(str(dst))
    if scheme.float_stream:
        float_stream_skips(out)
    if first:
        read_unrounded(out, first)
    info = {"method": "onnxruntime static QDQ", **scheme.record(), "float_nodes": keep_float,
            "calibration_inputs": len(arrays)}
    if scheme.refits_tail:
        info["tail_refit"] = [refit_tail(out, proto, name, arrays) for name in tail_convs(proto)]
    return out, info


def float_stream_skips(proto) -> int:
    """Rewire, in place, each Add of the QDQ model ``proto`` that reads the residual stream through
    DequantizeLinear(QuantizeLinear(x)) to read ``x`` itself; return how many inputs were rewired.

    onnxruntime's quantizer gives every consumer of a quantized tensor its rounded copy, so an Add left float
    (``nodes_to_exclude``) still sums the rounded stream. The stream is what an Add or a float conv (the head)
    wrote; a quantized conv's output (the block's second conv) keeps its Q/DQ pair, which onnxruntime fuses
    into QLinearConv."""
    producer = {o: n for n in proto.graph.node for o in n.output}

    def dq_of_q(name: str):
        dq = producer.get(name)
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return q if q is not None and q.op_type == "QuantizeLinear" else None

    rewired = 0
    for n in proto.graph.node:
        if n.op_type != "Add":
            continue
        for k, name in enumerate(n.input):
            q = dq_of_q(name)
            src = producer.get(q.input[0]) if q is not None else None
            quantized_conv = src is not None and src.op_type == "Conv" and dq_of_q(src.input[0]) is not None
            if src is not None and not quantized_conv and src.op_type in ("Add", "Conv"):
                n.input[k] = q.input[0]
                rewired += 1
    return rewired


def read_unrounded(proto, names: list[str]) -> int:
    """Rewire, in place, each node of ``names`` in the QDQ model ``proto`` that reads DequantizeLinear(
    QuantizeLinear(x)) to read ``x`` itself; return how many inputs were rewired. onnxruntime's quantizer gives a
    node it leaves float (``nodes_to_exclude``) the rounded copy of a tensor that another consumer needs
    quantized (by default the int8 stream's first Add)."""
    producer = {o: n for n in proto.graph.node for o in n.output}
    rewired = 0
    for n in proto.graph.node:
        if n.name not in names:
            continue
        dq = producer.get(n.input[0])
        q = producer.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if q is not None and q.op_type == "QuantizeLinear":
            n.input[0] = q.input[0]
            rewired += 1
    return rewired


def ort_optimized_ops(path: Path, level: str = "all") -> dict[str, int]:
    """Return {op type: count} of the graph ONNX Runtime (CPU) actually runs for the file at ``path``, after
    the graph optimisations of ``level`` that sr-shrink's runner applies (e.g. QDQ -> QLinearConv)."""
    import onnx
    import onnxruntime as ort

    from ..runtimes import ort_session_options

    with tempfile.TemporaryDirectory() as tmp:
        dst = Path(tmp) / "optimized.onnx"
        ort.InferenceSession(str(path), ort_session_options(1, level, optimized_to=dst),
                             providers=["CPUExecutionProvider"])
        ops: dict[str, int] = {}
        for n in onnx.load(str(dst)).graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def _set_metadata(proto, meta: dict) -> None:
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(k), str(v)
    proto.doc_string = "sr-shrink student: RGB LR in [0,1] -> RGB SR in [0,1]"


def onnx_graph(path: Path) -> GraphInfo:
    """Return the ops, tensor ranks and I/O of the ONNX file at ``path``."""
    import onnx

    proto = onnx.shape_inference.infer_shapes(onnx.load(str(path)))
    g = proto.graph
    ops: dict[str, int] = {}
    for n in g.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    ranks = {v.name: len(v.type.tensor_type.shape.dim) for v in [*g.input, *g.output, *g.value_info]}
    ranks.update({t.name: len(t.dims) for t in g.initializer})
    return GraphInfo(ops=ops, max_rank=max(ranks.values(), default=0),
                     high_rank=sorted(k for k, r in ranks.items() if r > 4),
                     inputs=[_io(v) for v in g.input], outputs=[_io(v) for v in g.output])


def _io(v) -> dict:
    import onnx

    t = v.type.tensor_type
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in t.shape.dim]
    return {"name": v.name, "shape": dims, "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name}


TARGET = Target(
    name="onnx", suffix=".onnx", default_precision="fp32", default_layout="nchw",
    allowed_ops=frozenset({"Conv", "ConvTranspose", "Relu", "Add", "Clip", "DepthToSpace", "Transpose", "Cast",
                           "QuantizeLinear", "DequantizeLinear"}),
    runtime="onnxruntime", converter="onnxruntime", require=require_onnx, export=export_onnx, graph=onnx_graph,
    size_range=(4, MAX_SIDE), demo_precisions=("fp32", "int8"), int8_scheme=INT8_SCHEME, benched=True,
    # BENCHMARKS 19a and 23: mean int8 loss on the panel 0.070 dB by default, 0.029 with the first two, 0.019 with
    # all three; w8a16 0.004 (before the tail refit; with it, 3 seeds: 0.042 by default, 0.017 with the first two,
    # BENCHMARKS 29)
    int8_closer=(Int8Option("--no-reduce-range", "reduce_range", False, "ARM, x86 with VNNI, NPUs"),
                 Int8Option("--float-stream", "float_stream", True, "slower"),
                 Int8Option("--float-first-conv", "float_first_conv", True, "slower"),
                 Int8Option("--qat 1000", "qat_steps"),
                 Int8Option("--precision w8a16", None, when="NPUs")))
