"""Will a .tflite run on the LiteRT (TFLite) GPU delegate? A report read from the file's flatbuffer.

The GPU delegate takes the ops it supports and leaves the rest to the CPU, silently: one op it refuses splits
the graph and usually makes the whole model slower than plain CPU (tensorflow #39746). :func:`gpu_report`
applies the delegate's published rules to every op and tensor of the file and returns
``{"ok": bool, "reasons": [...], "fixes": [...], "rules": ...}``; ``ok`` means no rule refuses anything.

The rules (what was assumed, and from where):

- **ops**: the op codes ``CheckGpuDelegateCompatibility`` accepts in TensorFlow Lite's
  ``tensorflow/lite/tools/versioning/gpu_compatibility.cc`` (the checks that used to be the delegate's
  ``IsSupported``); notably ``RELU_0_TO_1`` (what the converter makes of ``clamp(0, 1)``) is not among them;
- **fused activations**: CONV_2D, DEPTHWISE_CONV_2D, pooling, MUL, SUB and DIV accept NONE, RELU,
  RELU_N1_TO_1, RELU6 and TANH, not SIGN_BIT (``IsActivationSupported`` there);
- **ranks**: tensors of rank <= 4 (the delegate maps each tensor to BHWC; a rank-6 pixel-shuffle reshape
  is refused, tensorflow #39746);
- **static shapes**: no dimension of a ``shape_signature`` may be -1 (the delegate builds a fixed graph);
- **types**: float32/float16, 8-bit quantised (int8/uint8) and int32/bool index tensors; 16-bit activations
  (16x8 quantisation, ``--precision w8a16``) are not (``DEQUANTIZE`` of int16 is refused there and the
  delegate has no int16 kernels).

ai-edge-litert ships TFLite's model analyzer (``_pywrap_analyzer_wrapper``) with a ``gpu_compatibility``
flag, but in ai-edge-litert 2.3 it reported rank-6 reshapes, ``CUMSUM`` and ``ARG_MAX`` all as compatible, so
it is not used. Only a phone (``benchmark_model --use_gpu=true``, which logs the ops it could not delegate)
can confirm the report.
"""

from __future__ import annotations

from pathlib import Path

GPU_OPS = frozenset("""
ABS ADD ADD_N ATAN2 AVERAGE_POOL_2D BATCH_MATMUL CAST CEIL CONCATENATION CONV_2D COS CUMSUM DENSIFY
DEPTHWISE_CONV_2D DEPTH_TO_SPACE DEQUANTIZE DIV DYNAMIC_UPDATE_SLICE ELU EMBEDDING_LOOKUP EQUAL EXP FLOOR
FLOOR_DIV FLOOR_MOD FULLY_CONNECTED GATHER GELU GREATER GREATER_EQUAL HARD_SWISH LEAKY_RELU LESS LESS_EQUAL LOG
LOGICAL_AND LOGISTIC LSTM MAXIMUM MAX_POOL_2D MEAN MINIMUM MIRROR_PAD MUL NEG NOT_EQUAL ONE_HOT PACK PAD PADV2
POW PRELU QUANTIZE REDUCE_MAX REDUCE_MIN REDUCE_PROD RELU RELU6 RELU_N1_TO_1 RESHAPE RESIZE_BILINEAR
RESIZE_NEAREST_NEIGHBOR RSQRT SELECT SELECT_V2 SIGN SIN SLICE SOFTMAX SPACE_TO_DEPTH SPLIT SPLIT_V SQRT SQUARE
SQUARED_DIFFERENCE STABLEHLO_CLAMP STRIDED_SLICE SUB SUM TANH TILE TRANSPOSE TRANSPOSE_CONV
""".split())
ACTIVATION_CHECKED = frozenset({"CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "MUL", "SUB",
                                "DIV"})
GPU_ACTIVATIONS = frozenset({"NONE", "RELU", "RELU_N1_TO_1", "RELU6", "TANH"})
GPU_TYPES = frozenset({"FLOAT32", "FLOAT16", "INT8", "UINT8", "INT32", "BOOL"})
MAX_GPU_RANK = 4
RULES = ("LiteRT GPU delegate: ops and fused activations of TFLite's gpu_compatibility.cc, tensor rank <= 4, "
         "static shapes, float or 8-bit tensors")

FIXES = {
    "rank": "export with --shuffle convt (a one-hot TRANSPOSE_CONV pixel shuffle, no reshape)",
    "dynamic": "export with a fixed --input-size HxW",
    "int16": "use --precision fp16 or int8 for the GPU delegate (w8a16 is for CPU 16x8 kernels and NPUs)",
    "RELU_0_TO_1": "re-export with this sr-shrink: it writes the output clamp as MUL with a fused RELU6",
    "op": "the model holds an op the GPU delegate lacks; its students use none (re-export from a checkpoint)",
    "activation": "the model holds a fused activation the GPU delegate lacks",
}


def _enum_names(enum) -> dict[int, str]:
    return {v: k for k, v in vars(enum).items() if not k.startswith("_")}


def _text(name) -> str:
    return name.decode() if isinstance(name, bytes) else str(name)


def gpu_report(path: str | Path) -> dict:
    """Return the GPU-delegate report of the .tflite at ``path``: ``ok`` (no rule refuses anything), ``reasons``
    (one line per refused op type, tensor rank, dynamic shape or tensor type), ``fixes`` (the export options
    that remove them) and ``rules`` (what was checked)."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fbu

    ops, acts, types = (_enum_names(e) for e in (schema.BuiltinOperator, schema.ActivationFunctionType,
                                                 schema.TensorType))
    model = fbu.read_model(str(path))
    reasons: dict[str, str] = {}  # reason -> fix key

    def refuse(reason: str, fix: str) -> None:
        reasons.setdefault(reason, fix)

    for sg in model.subgraphs:
        bad_ops: dict[str, int] = {}
        for op in sg.operators:
            oc = model.operatorCodes[op.opcodeIndex]
            name = ops.get(max(oc.builtinCode, oc.deprecatedBuiltinCode), "CUSTOM")
            if name == "CUSTOM":
                name = f"CUSTOM ({_text(oc.customCode)})"
            if name not in GPU_OPS:
                bad_ops[name] = bad_ops.get(name, 0) + 1
            act = getattr(op.builtinOptions, "fusedActivationFunction", None)
            if name in ACTIVATION_CHECKED and act is not None and acts.get(act, str(act)) not in GPU_ACTIVATIONS:
                refuse(f"{name} with fused activation {acts.get(act, act)} is not supported", "activation")
        for name, n in sorted(bad_ops.items()):
            refuse(f"op {name} ({n}x) is not supported by the GPU delegate",
                   "RELU_0_TO_1" if name == "RELU_0_TO_1" else "op")
        high = [t for t in sg.tensors if t.shape is not None and len(t.shape) > MAX_GPU_RANK]
        if high:
            t = high[0]
            refuse(f"{len(high)} tensor(s) of rank > {MAX_GPU_RANK}, e.g. {_text(t.name)} of shape "
                   f"{[int(d) for d in t.shape]}", "rank")
        dyn = [t for t in sg.tensors if t.shapeSignature is not None and any(int(d) < 0 for d in t.shapeSignature)]
        if dyn:
            refuse(f"{len(dyn)} tensor(s) with dynamic shapes, e.g. {_text(dyn[0].name)} "
                   f"{[int(d) for d in dyn[0].shapeSignature]}", "dynamic")
        bad_types = sorted({types.get(t.type, str(t.type)) for t in sg.tensors} - GPU_TYPES)
        if bad_types:
            refuse(f"tensor type(s) {', '.join(bad_types)} (the delegate runs float and 8-bit tensors)",
                   "int16" if "INT16" in bad_types else "op")
    fixes = list(dict.fromkeys(FIXES[f] for f in reasons.values()))
    return {"ok": not reasons, "reasons": list(reasons), "fixes": fixes, "rules": RULES}


def delegate_warning(file: str, report: dict) -> str | None:
    """Return the one-line warning for a file the GPU delegate would not run whole (None when it would)."""
    if report.get("ok", True):
        return None
    fix = "; ".join(report.get("fixes", [])) or "see export.json"
    return (f"warning: {file} will not run wholly on the LiteRT GPU delegate ({report['reasons'][0]}"
            f"{' and more' if len(report['reasons']) > 1 else ''}); fix: {fix}")
