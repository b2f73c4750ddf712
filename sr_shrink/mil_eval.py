"""A numpy evaluator for Core ML ML Programs, so .mlpackage exports can be checked where Core ML cannot run.

The program is read back from the saved package with coremltools' MIL proto loader; every op is then
computed here in float32 (numpy; torch for the convolutions, the elementwise arithmetic and the float16
conversions, which it runs on every core) and rounded to the op's declared output dtype (fp16 programs therefore
round after every op, as Core ML's fp16 compute does). Compressed weights are decoded here too: affine int8
(``constexpr_affine_dequantize``) and palettes (``constexpr_lut_to_dense``, iOS16 packed-index form).
An op this evaluator does not know raises :class:`UnsupportedOp` rather than guessing. Exported packages
are run through it by :class:`sr_shrink.runtimes.MILRunner`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from .deps import quiet


class UnsupportedOp(Exception):
    """The program holds an op (or an op variant) the numpy evaluator cannot compute."""


@dataclass
class MILProgram:
    """The ``main`` function of a saved ML Program: its ops, input and output names, what each input
    takes (numpy dtype, shape with ``None`` for a free dimension) and the package's user metadata."""

    ops: list[Any]
    inputs: list[str]
    outputs: list[str]
    input_specs: dict[str, tuple[type, tuple[int | None, ...]]] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    input_shapes: dict[str, list[tuple[int, ...]]] = field(default_factory=dict)  # enumerated shapes, if any

    @cached_property
    def last_uses(self) -> dict[int, list[str]]:
        """Return {op index: names of the values read for the last time by that op} (program outputs excluded),
        worked out once per program: :func:`run_program` frees them after that op."""
        last: dict[str, int] = {}
        for i, op in enumerate(self.ops):
            for var in op.inputs.values():
                for v in var if isinstance(var, (list, tuple)) else (var,):
                    last[v.name] = i
        by_op: dict[int, list[str]] = {}
        for name, i in last.items():
            if name not in self.outputs:
                by_op.setdefault(i, []).append(name)
        return by_op


def load_program(path: str | Path) -> MILProgram:
    """Return the ``main`` function of the .mlpackage at ``path``, read without loading Core ML."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from coremltools.converters.mil.mil import types

    with quiet():
        model = ct.models.MLModel(str(path), skip_model_load=True)
        spec = model.get_spec()
        prog = milproto_load(spec, spec.specificationVersion, model.weights_dir)
    fn = prog.functions["main"]
    specs = {name: (types.nptype_from_builtin(var.dtype),
                    tuple(int(d) if isinstance(d, int) else None for d in var.shape))
             for name, var in fn.inputs.items()}
    return MILProgram(list(fn.operations), list(fn.inputs), [v.name for v in fn.outputs], specs,
                      dict(spec.description.metadata.userDefined),
                      {f.name: shapes for f in spec.description.input if (shapes := enumerated_shapes(f))})


def enumerated_shapes(feature) -> list[tuple[int, ...]]:
    """Return the shapes a Core ML input feature enumerates (an array's ``EnumeratedShapes`` in its own axis
    order; an RGB image's enumerated sizes as (1, 3, h, w)); empty when its size is fixed or a range."""
    kind = feature.type.WhichOneof("Type")
    if kind == "imageType" and feature.type.imageType.HasField("enumeratedSizes"):
        return [(1, 3, int(s.height), int(s.width)) for s in feature.type.imageType.enumeratedSizes.sizes]
    if kind == "multiArrayType" and feature.type.multiArrayType.HasField("enumeratedShapes"):
        return [tuple(int(d) for d in s.shape) for s in feature.type.multiArrayType.enumeratedShapes.shapes]
    return []


def program_ops(prog: MILProgram) -> dict[str, int]:
    """Return op type -> count over the program's ops."""
    ops: dict[str, int] = {}
    for op in prog.ops:
        ops[op.op_type] = ops.get(op.op_type, 0) + 1
    return ops


def program_ranks(prog: MILProgram) -> dict[str, int]:
    """Return the rank of every tensor the program's ops produce (scalars are rank 0)."""
    return {v.name: len(getattr(v, "shape", ()) or ()) for op in prog.ops for v in op.outputs}


def run_program(prog: MILProgram, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Return the program's outputs for ``feeds`` (input name -> array), computed op by op in numpy."""
    missing = set(prog.inputs) - set(feeds)
    if missing:
        raise ValueError(f"missing program inputs: {', '.join(sorted(missing))}")
    env: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in feeds.items()}
    for i, op in enumerate(prog.ops):
        env[op.outputs[0].name] = _run_op(op, env)
        for name in prog.last_uses.get(i, ()):  # free what no later op reads: a large input holds a few, not all
            env.pop(name, None)
    return {name: env[name] for name in prog.outputs}


def _run_op(op, env: dict[str, np.ndarray]) -> np.ndarray:
    if op.op_type == "const":
        return np.asarray(op.outputs[0].val)
    impl = OPS.get(op.op_type)
    if impl is None or len(op.outputs) != 1:
        raise UnsupportedOp(f"MIL op '{op.op_type}' ({op.name}) is not implemented in the numpy evaluator")
    args = {k: _value(v, env) for k, v in op.inputs.items()}
    return _as_dtype(impl(**args), op.outputs[0].dtype)


def _value(var, env: dict[str, np.ndarray]):
    if isinstance(var, (list, tuple)):
        return [_value(v, env) for v in var]
    if var.name in env:
        return env[var.name]
    if var.op is None or var.op.op_type == "const":
        return np.asarray(var.val)
    raise UnsupportedOp(f"value of '{var.name}' is not available (produced by {var.op.op_type})")


def _as_dtype(arr: np.ndarray, mil_dtype) -> np.ndarray:
    from coremltools.converters.mil.mil import types

    if types.is_tensor(mil_dtype):
        mil_dtype = mil_dtype.get_primitive()
    return _convert(np.asarray(arr), types.nptype_from_builtin(mil_dtype))


def _f32(x) -> np.ndarray:
    return _convert(np.asarray(x), np.float32)


def _t32(x):
    """Return ``x`` (an array or a number) as a float32 torch tensor: the elementwise ops run in torch, on every
    core, where numpy's ran on one (and emulated float16 arithmetic); the results are the same float32 values."""
    return _tensor(_f32(x))


def _tensor(arr: np.ndarray):
    """Return a torch tensor sharing ``arr``'s memory, read-only arrays included (a program's constants, a
    caller's input): every op here writes new tensors, never into its inputs, so torch's warning about them
    does not apply."""
    import torch

    if arr.flags.writeable:
        return torch.from_numpy(arr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _convert(arr: np.ndarray, dtype) -> np.ndarray:
    """Return ``arr`` as ``dtype``; float32 <-> float16 through torch, whose conversion rounds the same (IEEE,
    to nearest even) and is vectorised, where numpy's took as long as the op itself on large images."""
    if arr.dtype == dtype:
        return arr
    if {arr.dtype, np.dtype(dtype)} == {np.dtype(np.float16), np.dtype(np.float32)} and arr.size > 4096:
        import torch

        return _tensor(np.ascontiguousarray(arr)).to(torch.float16 if dtype == np.float16 else torch.float32).numpy()
    return arr.astype(dtype)


def conv(x, weight, bias=None, strides=(1, 1), pad_type="valid", pad=(0, 0, 0, 0), dilations=(1, 1), groups=1,
         **_) -> np.ndarray:
    """Return the 2-D convolution of NCHW ``x`` with OIHW ``weight`` (groups 1, dilation 1), in float32."""
    import torch
    import torch.nn.functional as F

    if int(groups) != 1 or any(int(d) != 1 for d in dilations) or np.ndim(x) != 4:
        raise UnsupportedOp("conv with groups/dilation != 1 or non-2-D input")
    w = _tensor(np.ascontiguousarray(_f32(weight)))
    pt, pb, pl, pr = _pads(str(pad_type), pad, *w.shape[2:])
    b = _tensor(np.ascontiguousarray(_f32(bias)).reshape(-1)) if bias is not None else None
    # torch's float32 convolution (oneDNN) sums the same products as a numpy window sum, in another order, and
    # several times as fast; even zero padding is the conv's own (no padded copy of a large input)
    stride = tuple(int(s) for s in strides)
    with torch.no_grad():
        xt = _tensor(np.ascontiguousarray(_f32(x)))
        if (pt, pl) == (pb, pr):
            return F.conv2d(xt, w, b, stride=stride, padding=(pt, pl)).numpy()
        return F.conv2d(F.pad(xt, (pl, pr, pt, pb)), w, b, stride=stride).numpy()


def _pads(pad_type: str, pad, kh: int, kw: int) -> tuple[int, int, int, int]:
    if pad_type == "custom":
        return tuple(int(p) for p in pad)
    if pad_type == "valid":
        return 0, 0, 0, 0
    if pad_type == "same":
        return (kh - 1) // 2, kh // 2, (kw - 1) // 2, kw // 2
    raise UnsupportedOp(f"conv pad_type '{pad_type}'")


def pixel_shuffle(x, upscale_factor) -> np.ndarray:
    """Return PyTorch-style pixel shuffle (channel c*r*r + i*r + j -> pixel (i, j) of channel c)."""
    r = int(upscale_factor)
    n, c, h, w = x.shape
    y = np.reshape(x, (n, c // (r * r), r, r, h, w)).transpose(0, 1, 4, 2, 5, 3)
    return y.reshape(n, c // (r * r), h * r, w * r)


def depth_to_space(x, block_size) -> np.ndarray:
    """Return TensorFlow-style depth-to-space (DCR: channel (i*r + j)*C + c -> pixel (i, j) of c)."""
    r = int(block_size)
    n, c, h, w = x.shape
    y = np.reshape(x, (n, r, r, c // (r * r), h, w)).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (r * r), h * r, w * r)


def affine_dequantize(quantized_data, zero_point, scale, axis) -> np.ndarray:
    """Return ``(q - zero_point) * scale`` with per-channel parameters along ``axis``."""
    q = np.asarray(quantized_data).astype(np.float32)
    shape = [1] * q.ndim
    zp, sc = _f32(zero_point), _f32(scale)
    if zp.ndim or sc.ndim:
        shape[int(axis)] = -1
    return (q - zp.reshape(shape if zp.ndim else ())) * sc.reshape(shape if sc.ndim else ())


def lut_to_dense(indices, lut, shape) -> np.ndarray:
    """Return ``lut[index]`` reshaped to ``shape`` from n-bit indices packed little-endian into bytes."""
    lut = np.asarray(lut)
    if lut.ndim != 1:
        raise UnsupportedOp("constexpr_lut_to_dense with a grouped (iOS18) palette")
    nbits = int(np.log2(lut.size))
    count = int(np.prod(shape))
    bits = np.unpackbits(np.asarray(indices, dtype=np.uint8), bitorder="little")[: count * nbits]
    idx = bits.reshape(count, nbits).astype(np.int64) @ (1 << np.arange(nbits))
    return lut[idx].reshape(tuple(int(s) for s in shape))


def cast(x, dtype) -> np.ndarray:
    """Return ``x`` cast to the MIL dtype name ``dtype`` (fp16, fp32, int32, ...)."""
    names = {"fp16": np.float16, "fp32": np.float32, "int32": np.int32, "int16": np.int16, "int8": np.int8,
             "uint8": np.uint8, "bool": np.bool_}
    if str(dtype) not in names:
        raise UnsupportedOp(f"cast to '{dtype}'")
    return _convert(np.asarray(x), names[str(dtype)])


OPS: dict[str, Callable[..., np.ndarray]] = {
    "conv": conv,
    "relu": lambda x: _t32(x).clamp_min(0).numpy(),
    "add": lambda x, y: (_t32(x) + _t32(y)).numpy(),
    "sub": lambda x, y: (_t32(x) - _t32(y)).numpy(),
    "mul": lambda x, y: (_t32(x) * _t32(y)).numpy(),
    "clip": lambda x, alpha, beta: _t32(x).clamp(float(alpha), float(beta)).numpy(),
    "cast": cast,
    "transpose": lambda x, perm: np.transpose(x, [int(p) for p in perm]),
    "reshape": lambda x, shape: np.reshape(x, [int(s) for s in shape]),
    "concat": lambda values, axis, interleave=False: _concat(values, axis, interleave),
    "tile": lambda x, reps: np.tile(x, [int(r) for r in reps]),
    "pixel_shuffle": pixel_shuffle,
    "depth_to_space": depth_to_space,
    "constexpr_affine_dequantize": affine_dequantize,
    "constexpr_lut_to_dense": lut_to_dense,
}


def _concat(values, axis, interleave) -> np.ndarray:
    if bool(interleave):
        raise UnsupportedOp("concat with interleave=True")
    return np.concatenate(values, axis=int(axis))
