"""Core ML export: an ML Program (.mlpackage) via ``torch.jit.trace`` and ``coremltools.convert``.

Input ``lr`` (1,3,H,W) float32 at the sizes ``shapes`` lists (``ct.EnumeratedShapes``, the first is the
default; without ``shapes``: :data:`~sr_shrink.export.options.COREML_SHAPES`), unless a size is fixed or
``shapes="any"`` leaves H and W free in [8, 2048] (``ct.RangeDim``). The Neural Engine runs an enumerated
model at every listed size but a RangeDim one only at its default size (coremltools #2370). Every listed
size is verified (:func:`verify_shapes`); output ``sr``. fp16 (the default) computes in
float16, fp32 in float32; ``int8`` stores int8 weights
(linear symmetric, per channel, [-127, 127]; fp16 compute), by default chosen by GPTQ and with bias correction on
calibration inputs before conversion (:mod:`~sr_shrink.export.gptq`, :mod:`~sr_shrink.export.biascorr`; the grid is
coremltools' own, so it keeps them; BENCHMARKS.md section 36); ``palettize`` stores 4/6/8-bit palettes (k-means when
scikit-learn is installed, else uniform). Core ML cannot run on Linux, so verification reads the program
back and evaluates it in numpy (:mod:`sr_shrink.mil_eval`, run by :class:`sr_shrink.runtimes.MILRunner`).
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..deps import quiet, require
from ..mil_eval import load_program, program_ops, program_ranks
from .graph import GraphInfo
from .targets import Target
from .verify import images_at, verify
from .wrapper import MobileSR, example_input

if TYPE_CHECKING:
    from .options import ExportConfig

RANGE = (8, 2048)
DEPLOYMENT = "iOS16"


def require_coreml(precision: str = "fp16") -> None:
    """Import coremltools (any ``precision``); a clear error naming the extra if it is missing."""
    require("coreml", "coremltools", "coremltools.optimize.coreml")


def export_coreml(model: MobileSR, path: Path, cfg: ExportConfig, calib: None, meta: dict) -> dict:
    """Write ``model`` to ``path`` as an .mlpackage in ``cfg``'s precision; return the entry fields it sets.

    ``calib`` is unused here: Core ML int8 and palettes compress weights only (activation quantisation needs
    macOS); int8's calibration inputs have served GPTQ and bias correction before (export.pipeline).
    """
    import coremltools as ct

    if cfg.io == "image":
        model, meta = image_io(model), {**meta, "io": "image", "value_range": "RGB 8-bit image (0-255)"}
    mlmodel = _convert(model, cfg)
    extra = {"deployment_target": DEPLOYMENT, "compute_precision": "fp32" if cfg.precision == "fp32" else "fp16",
             "exporter": f"coremltools {ct.__version__} (torch.jit.trace)"}
    if cfg.precision == "int8":
        mlmodel, extra["quantization"] = _linear_int8(mlmodel)
    if cfg.palettize:
        mlmodel, extra["palettization"] = _palettize(mlmodel, cfg.palettize)
    _set_metadata(mlmodel, meta)
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    with quiet():
        mlmodel.save(str(path))
    return extra


def _input_shape(cfg: ExportConfig):
    import coremltools as ct

    if cfg.shapes:
        shapes = [(1, h, w, 3) if cfg.layout == "nhwc" else (1, 3, h, w) for h, w in cfg.shapes]
        return ct.EnumeratedShapes(shapes=shapes, default=shapes[0])
    if cfg.input_size:
        h, w = cfg.input_size
    else:
        h = ct.RangeDim(lower_bound=RANGE[0], upper_bound=RANGE[1], default=64)
        w = ct.RangeDim(lower_bound=RANGE[0], upper_bound=RANGE[1], default=64)
    return ct.Shape(shape=(1, h, w, 3) if cfg.layout == "nhwc" else (1, 3, h, w))


def image_io(model: MobileSR) -> MobileSR:
    """Return a copy of ``model`` that takes and returns pixel values 0-255 with no extra op: the head conv's
    weights divided by 255 (the 1/255 input scale folded in), the tail conv's weights and bias times 255, the
    anchor conv unchanged (255 x in is 255 x out) and the clamp at 255 (coremltools #2213: an ImageType output
    takes the model's values as they are)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.head.weight.div_(255.0)
        model.tail.weight.mul_(255.0)
        if model.tail.bias is not None:
            model.tail.bias.mul_(255.0)
    model.out_max = 255.0
    return model


def _io_types(cfg: ExportConfig, io_dtype):
    import coremltools as ct

    if cfg.io == "image":  # scale 1.0: the 1/255 is in the first conv (image_io), no mul op is added
        return ([ct.ImageType(name="lr", shape=_input_shape(cfg), color_layout=ct.colorlayout.RGB, scale=1.0)],
                [ct.ImageType(name="sr", color_layout=ct.colorlayout.RGB)])
    return ([ct.TensorType(name="lr", shape=_input_shape(cfg), dtype=io_dtype)],
            [ct.TensorType(name="sr", dtype=io_dtype)])


TRACE_SIZE = (64, 80)  # LR size of the example input the wrapper is traced with (any size gives the same program)


def _convert(model: MobileSR, cfg: ExportConfig):
    import coremltools as ct

    io_dtype = np.float16 if cfg.native_io and cfg.precision != "fp32" else np.float32
    precision = ct.precision.FLOAT32 if cfg.precision == "fp32" else ct.precision.FLOAT16
    with quiet(), torch.no_grad():
        # traced at a small size whatever the input takes: the graph holds no size (conv, add, clip, pixel
        # shuffle), so the ML Program is the same as one traced at the exported size (checked for the default,
        # fixed, any, nhwc, convt and image-I/O inputs), and a 2048x2048 x4 trace no longer peaks at 11.5 GB
        traced = torch.jit.trace(model, example_input(TRACE_SIZE, cfg.layout) * model.out_max)
        inputs, outputs = _io_types(cfg, io_dtype)
        return ct.convert(traced, inputs=inputs, outputs=outputs, convert_to="mlprogram",
                          compute_precision=precision, minimum_deployment_target=getattr(ct.target, DEPLOYMENT),
                          skip_model_load=True)


def _linear_int8(mlmodel):
    import coremltools.optimize.coreml as cto

    op_cfg = cto.OpLinearQuantizerConfig(mode="linear_symmetric", dtype="int8", granularity="per_channel",
                                         weight_threshold=0)
    with quiet():
        out = cto.linear_quantize_weights(mlmodel, cto.OptimizationConfig(global_config=op_cfg))
    return out, {"method": "coremltools linear_quantize_weights", "weights": "int8 symmetric per channel",
                 "activations": "fp16"}


def _palettize(mlmodel, nbits: int):
    import coremltools.optimize.coreml as cto

    mode = "kmeans" if _has_sklearn() else "uniform"
    op_cfg = cto.OpPalettizerConfig(mode=mode, nbits=nbits, weight_threshold=0)
    with quiet():
        out = cto.palettize_weights(mlmodel, cto.OptimizationConfig(global_config=op_cfg))
    return out, {"method": "coremltools palettize_weights", "nbits": nbits, "mode": mode,
                 "granularity": "per tensor"}


def _has_sklearn() -> bool:
    try:
        import sklearn  # noqa: F401
    except ImportError:
        return False
    return True


def _set_metadata(mlmodel, meta: dict) -> None:
    mlmodel.author = meta.get("producer", "sr-shrink")
    teacher = f", distilled from {meta['teacher']}" if meta.get("teacher") else ""
    mlmodel.short_description = (f"sr-shrink x{meta.get('scale')} super-resolution student, stage {meta.get('stage')} "
                                 f"({meta.get('n_blocks')} blocks){teacher}: RGB LR in [0,1] -> RGB SR in [0,1]")
    values = "8-bit RGB image" if meta.get("io") == "image" else "values in [0, 1]"
    if meta.get("io") == "image":
        mlmodel.short_description = mlmodel.short_description.replace("RGB LR in [0,1] -> RGB SR in [0,1]",
                                                                      "RGB image in -> RGB image out")
    mlmodel.input_description["lr"] = f"low-resolution RGB image, {values}"
    mlmodel.output_description["sr"] = f"super-resolved RGB image (x{meta.get('scale')}), {values}"
    for k, v in meta.items():
        mlmodel.user_defined_metadata[str(k)] = str(v)


def coreml_graph(path: Path) -> GraphInfo:
    """Return the ops, tensor ranks and I/O descriptions of the .mlpackage at ``path``."""
    prog = load_program(path)
    ranks = program_ranks(prog)
    ins, outs = coreml_io(path)
    return GraphInfo(ops=program_ops(prog), max_rank=max(ranks.values(), default=0),
                     high_rank=sorted(k for k, r in ranks.items() if r > 4), inputs=ins, outputs=outs)


def coreml_io(path: Path) -> tuple[list[dict], list[dict]]:
    """Return the model description's inputs and outputs: name, shape, dtype and size ranges."""
    import coremltools as ct

    with quiet():
        spec = ct.models.MLModel(str(path), skip_model_load=True).get_spec()
    return [_feature(f) for f in spec.description.input], [_feature(f) for f in spec.description.output]


def _feature(f) -> dict:
    from coremltools.proto import FeatureTypes_pb2 as ft

    if f.type.WhichOneof("Type") == "imageType":
        img = f.type.imageType
        d = {"name": f.name, "shape": [1, 3, int(img.height), int(img.width)], "dtype": "image (RGB, 8-bit)"}
        if img.HasField("enumeratedSizes"):
            d["enumerated"] = [[1, 3, int(s.height), int(s.width)] for s in img.enumeratedSizes.sizes]
        if img.HasField("imageSizeRange"):
            r = img.imageSizeRange
            d["ranges"] = [[1, 1], [3, 3], [r.heightRange.lowerBound, r.heightRange.upperBound],
                           [r.widthRange.lowerBound, r.widthRange.upperBound]]
        return d
    arr = f.type.multiArrayType
    d = {"name": f.name, "shape": list(arr.shape),
         "dtype": ft.ArrayFeatureType.ArrayDataType.Name(arr.dataType).lower()}
    if arr.HasField("shapeRange"):
        d["ranges"] = [[r.lowerBound, r.upperBound] for r in arr.shapeRange.sizeRanges]
    if arr.HasField("enumeratedShapes"):
        d["enumerated"] = [list(s.shape) for s in arr.enumeratedShapes.shapes]
    return d


def check_coreml_io(path: Path, cfg: ExportConfig) -> None:
    """Raise ValueError unless the package's I/O are ``lr``/``sr`` rank-4 arrays with the expected sizes."""
    ins, outs = coreml_io(path)
    if [f["name"] for f in ins] != ["lr"] or [f["name"] for f in outs] != ["sr"]:
        raise ValueError(f"unexpected I/O names {[f['name'] for f in ins]} -> {[f['name'] for f in outs]}")
    lr = ins[0]
    hw_axes = (1, 2) if cfg.layout == "nhwc" else (2, 3)
    if cfg.shapes:
        got = [tuple(s[a] for a in hw_axes) for s in lr.get("enumerated", [])]
        if got != list(cfg.shapes):
            raise ValueError(f"enumerated input shapes {got}, expected {list(cfg.shapes)}")
    elif cfg.dynamic:
        ranges = [lr.get("ranges", [[0, 0]] * 4)[a] for a in hw_axes]
        if any(r != list(RANGE) for r in ranges):
            raise ValueError(f"input size ranges {ranges}, expected {list(RANGE)}")
    elif [lr["shape"][a] for a in hw_axes] != list(cfg.input_size):
        raise ValueError(f"input shape {lr['shape']} does not match {cfg.input_size}")


def input_note(entry: dict) -> str | None:
    """Return the line ``export`` prints on which LR sizes a Core ML package's input takes (None for other
    targets): the enumerated sizes, a fixed size, or any size, which the Neural Engine runs only at 64x64."""
    if entry.get("target") != "coreml":
        return None
    if entry.get("shapes"):
        sizes = ", ".join(f"{h}x{w}" for h, w in entry["shapes"])
        return (f"{entry['file']}: takes LR {sizes} (EnumeratedShapes, each verified; the Neural Engine runs every "
                "one; --shapes lists others, --shapes any takes any size)")
    if entry.get("input_size"):
        h, w = entry["input_size"]
        return f"{entry['file']}: takes LR {h}x{w} only (a fixed size)"
    return (f"{entry['file']}: takes any LR size {RANGE[0]}..{RANGE[1]} (RangeDim); the Neural Engine runs it only at "
            "64x64, its default size, so drop --shapes any (or list sizes with --shapes) for the ANE")


def images_per_shape(n_images: int, shapes: tuple[tuple[int, int], ...]) -> dict[tuple[int, int], int]:
    """Return {(h, w): how many of ``n_images`` verification images to run at that size}: all of them at the
    smallest size (up to 720x1280 pixels), and at each larger one as many as give about the same pixel count (at
    least one); :func:`~sr_shrink.export.verify.images_at`, the rule every fixed verification size follows."""
    return images_at(n_images, shapes)


def verify_shapes(runner, student, pairs: list, scale: int, shapes: tuple[tuple[int, int], ...], tolerance: str,
                  label: str) -> dict:
    """Return the verification record of an enumerated-shape package: :func:`~sr_shrink.export.verify.verify` at
    every listed LR size (centred crops of the eval images, padded), ``verified`` only when every size is;
    ``shapes`` holds each size's numbers and ``worst_delta_psnr_y`` the largest loss. The headline numbers are
    those of the failing size farthest from the student, or when all pass, of the smallest size, which sees
    every image: each size gets about the same number of pixels, fewer images (at least one) at larger sizes
    (:func:`images_per_shape`), so a 720x1280 size costs what the 256x256 one does."""
    counts = images_per_shape(len(pairs), shapes)
    recs = {hw: verify(runner, student, pairs[:n], scale, hw, tolerance, label) for hw, n in counts.items()}
    failing = [r for r in recs.values() if not r["verified"]]
    smallest = recs[min(shapes, key=lambda hw: hw[0] * hw[1])]
    head = max(failing, key=lambda r: abs(r["delta_psnr_y"])) if failing else smallest
    out = {**head, "verified": not failing, "worst_delta_psnr_y": min(r["delta_psnr_y"] for r in recs.values()),
           "inputs": f"centred LR crops (padded) at each of the {len(shapes)} enumerated shapes "
                     f"({', '.join(f'{n} at {h}x{w}' for (h, w), n in counts.items())} images)",
           "shapes": {f"{h}x{w}": {**{f: r[f] for f in ("verified", "delta_psnr_y", "psnr_vs_torch", "max_abs_err")},
                                   "images": counts[(h, w)]} for (h, w), r in recs.items()}}
    if out["verified"]:
        out.pop("reason", None)
    return out


TARGET = Target(
    name="coreml", suffix=".mlpackage", default_precision="fp16", default_layout="nchw",
    allowed_ops=frozenset({"const", "cast", "conv", "conv_transpose", "relu", "add", "clip", "pixel_shuffle",
                           "depth_to_space", "transpose", "constexpr_affine_dequantize", "constexpr_lut_to_dense",
                           "constexpr_blockwise_shift_scale"}),
    runtime="mil", converter="coremltools", require=require_coreml, export=export_coreml, graph=coreml_graph,
    size_range=RANGE, demo_precisions=("fp16",), quantizes_activations=False,
    options=frozenset({"shapes", "palettize", "image_io"}), check_io=check_coreml_io, verify_shapes=verify_shapes,
    # BENCHMARKS 36: int8 weights rounded by GPTQ with bias correction, on the calibration inputs
    gptq_by_default=frozenset({"int8"}), bias_correction_by_default=frozenset({"int8"}))
