"""What ``sr-shrink export`` is asked to do: :class:`ExportConfig`, the targets, precisions and defaults."""

from __future__ import annotations

import math
from dataclasses import MISSING, dataclass, field, fields, replace
from pathlib import Path

from .. import sizes
from ..errors import SRShrinkError
from .targets import TARGETS as REGISTRY
from .targets import get_target

QAT_TARGETS = ("student", "teacher")  # what --qat fine-tunes against (export.qat)
CALIB_METHODS = ("histogram", "percentile")  # TFLite int8 activation ranges (export.tflite)

# Views of the target registry (sr_shrink.export.targets), kept for existing importers.
TARGETS = tuple(REGISTRY)
PRECISIONS = ("fp32", "fp16", "int8", "w8a16")  # w8a16: int8 weights, 16-bit activations
SUFFIX = {n: t.suffix for n, t in REGISTRY.items()}
DEFAULT_PRECISION = {n: t.default_precision for n, t in REGISTRY.items()}
DEFAULT_LAYOUT = {n: t.default_layout for n, t in REGISTRY.items()}
TFLITE_DEFAULT_SIZE = REGISTRY["tflite"].fixed_size
PALETTE_BITS = (4, 6, 8)
# Core ML --shapes default: LR tiles (256, 512) and frames (360p, 540p, 720p: 720p/1080p/1440p out at x2)
# (the default without --shapes; --shapes any gives a RangeDim input of any size 8..2048 instead)
COREML_SHAPES = ((256, 256), (512, 512), (360, 640), (540, 960), (720, 1280))
ANY_SHAPE = "any"
CALIB_CROP = 96  # LR crop side of calibration photos for exports with free input size
CALIB_PIXELS = 128 * CALIB_CROP * CALIB_CROP
CALIB_MAX_BYTES = 4 * 2**30  # --calib-samples beyond this much float32 input (all held at once) is refused
# ExportConfig field -> the `sr-shrink export` option that sets it: every option that changes the written file
# (not the verification's --eval, nor --out/--stage/--target/--precision, which export_command adds itself)
FILE_OPTIONS = {"input_size": "--input-size", "shapes": "--shapes", "io": "--io", "layout": "--layout",
                "palettize": "--palettize", "shuffle": "--shuffle", "calib": "--calib",
                "calib_method": "--calib-method", "calib_samples": "--calib-samples", "seed": "--seed",
                "native_io": "--native-io", "qat_steps": "--qat", "qat_target": "--qat-target", "qat_lr": "--qat-lr",
                "teacher": "--teacher", "trust_pickle": "--trust-pickle", "bias_correction": "--bias-correction",
                "gptq": "--gptq",
                "equalize": "--equalize", "reduce_range": "--reduce-range", "float_stream": "--float-stream",
                "float_first_conv": "--float-first-conv", "tail_refit": "--tail-refit"}


@dataclass
class ExportConfig:
    """What to export and how; ``None`` fields take the target's default (see ``__post_init__``).

    ``input_size`` (h, w) fixes the LR input size (TFLite always has one, 256x256 by default); ``calib`` is
    ``"generator"``, ``"synthetic"`` (the run's recorded synthetic sources,
    :func:`~sr_shrink.export.calib.run_synthetic`), a folder of images or ``None`` (generator.pt when the run has
    one, else the bundled eval images); ``native_io`` gives the model I/O in its own precision (fp16 for ONNX/Core
    ML fp16, int8 for TFLite int8) instead of float32; ``shuffle`` picks the wrapper's pixel-shuffle form
    ("native"/"convt"); ``eval_images`` caps the verification images (``None``: all); ``shapes`` (Core ML) lists the LR
    sizes (h, w) of an ``EnumeratedShapes`` input, "default" or ``None`` (no ``input_size`` either) for
    :data:`COREML_SHAPES`, "any" for a ``RangeDim`` input of any size 8..2048; ``io`` "image" gives
    a Core ML package RGB image input and output (pixel values 0-255). ``qat_steps`` > 0
    fine-tunes the student with
    fake quantization for that many steps before an int8 export (:mod:`~sr_shrink.export.qat`), at Adam rate
    ``qat_lr``, against ``qat_target``: "student" (the original fp32 student's output, ranges frozen at the
    file's calibration; lr 1e-5) or "teacher" (``teacher``, default the run's, loaded with ``trust_pickle``; EMA
    ranges; lr 1e-4); None resolves to "teacher" when ``teacher`` is given, else "student".
    ``equalize`` rescales the student's stream and hidden channels towards equal ranges before an int8 export
    (:mod:`~sr_shrink.export.equalize`; the same function, off by default); ``bias_correction`` corrects the
    int8 / w8a16 file's biases for its weights' rounding (:mod:`~sr_shrink.export.biascorr`; None: the target's
    ``bias_correction_by_default`` precisions, w8a16 and Core ML int8, where it measured better on the panel at 3
    seeds, BENCHMARKS 27 and 36); ``gptq`` chooses the int8 weights' grid points against the calibration inputs
    instead of rounding to nearest (:mod:`~sr_shrink.export.gptq`; None: the target's ``gptq_by_default``
    precisions, w8a16, TFLite int8 and Core ML int8, where it measured better on the panel at 3 seeds, BENCHMARKS 34
    and 36, unless ``qat_steps``). Core ML int8 (int8 weights, fp16 compute) takes calibration inputs for these two
    alone (:attr:`uses_calib`). ONNX int8 only:
    ``reduce_range`` False writes full-range [-127, 127] weights instead of 7-bit ones (None: the scheme's
    default, 7-bit), ``float_stream`` keeps the residual stream float, ``float_first_conv`` the first body conv
    (reading the head's output unrounded), ``tail_refit`` refits the float tail conv to the quantized stream (None:
    the scheme's default; :class:`~sr_shrink.export.onnx.Int8Scheme`).
    """

    target: str
    precision: str | None = None
    input_size: tuple[int, int] | str | None = None
    layout: str | None = None
    palettize: int | None = None
    calib: str | None = None
    calib_samples: int | None = None
    seed: int = 0
    eval_dir: str | Path | None = None
    eval_images: int | None = None
    native_io: bool = False
    shuffle: str | None = None
    verify: bool = True
    qat_steps: int = 0
    qat_lr: float | None = None
    qat_target: str | None = None
    teacher: str | Path | None = None
    trust_pickle: bool = False
    shapes: tuple[tuple[int, int], ...] | str | None = None
    io: str = "tensor"
    equalize: bool = False
    bias_correction: bool | None = None
    gptq: bool | None = None
    reduce_range: bool | None = None
    float_stream: bool = False
    float_first_conv: bool = False
    calib_method: str | None = None
    tail_refit: bool | None = None
    # (gptq, bias_correction) as given, before the defaults below fill them in: see without_qat
    asked: tuple = field(default=(None, None), init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.asked = (self.gptq, self.bias_correction)
        rec = get_target(self.target)
        self.precision = self.precision or rec.default_precision
        if self.precision not in PRECISIONS:
            raise SRShrinkError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}.")
        self.layout = _choice("layout", self.layout or rec.default_layout, ("nchw", "nhwc"))
        self.shuffle = _choice("shuffle", self.shuffle or rec.default_shuffle, ("native", "convt"))
        self.input_size = parse_size(self.input_size, "--input-size", *rec.size_range)
        if self.input_size is None:
            self.input_size = rec.fixed_size
        self._check_palettize()
        self._check_shapes()
        self.io = _choice("io", self.io or "tensor", ("tensor", "image"))
        if self.io == "image" and "image_io" not in rec.options:  # not "drop --layout nhwc": tflite's default
            raise SRShrinkError(f"--io image is for Core ML (an RGB image input and output), not {self.target}; "
                                "drop --io image, or use --target coreml.")
        if self.io == "image" and (self.layout != "nchw" or self.native_io):
            given = " and ".join(f for f, v in (("--layout nhwc", self.layout != "nchw"),
                                                ("--native-io", self.native_io)) if v)
            raise SRShrinkError(f"--io image is for Core ML with the default nchw layout and float I/O; drop {given}.")
        if self.precision == "w8a16" and "w8a16" not in rec.options:
            raise SRShrinkError("--precision w8a16 is for onnx and tflite; Core ML quantises activations only on "
                                "macOS (use --precision int8 or --palettize for Core ML).")
        if self.bias_correction is None:  # int8 after --qat as before (Core ML's --qat files were measured without)
            self.bias_correction = (self.precision in rec.bias_correction_by_default
                                    and not (self.qat_steps and self.precision == "int8"))
        if self.gptq is None:  # not after --qat, which fitted the weights to round to nearest
            self.gptq = self.precision in rec.gptq_by_default and not self.qat_steps
        if self.calib_samples is None:
            self.calib_samples = auto_calib_samples(self.input_size)
        if self.calib_samples < 1:
            raise SRShrinkError(f"--calib-samples must be at least 1, not {self.calib_samples}.")
        if self.precision in ("int8", "w8a16"):
            _check_calib_memory(self.calib_samples, self.input_size)
        self._check_qat()
        self._check_int8_scheme()
        self._check_calib_method()

    def without_qat(self) -> ExportConfig:
        """Return the config of the file ``export`` writes with these options but no ``--qat``: GPTQ and bias
        correction take the target's defaults without QAT unless they were given (the PTQ file a QAT export is
        measured against; Core ML int8 and TFLite int8 round by GPTQ by default, which they skip after QAT)."""
        gptq, bias_correction = self.asked
        return replace(self, qat_steps=0, qat_lr=None, qat_target=None, teacher=None, trust_pickle=False, gptq=gptq,
                       bias_correction=bias_correction)

    def _check_calib_method(self) -> None:
        if self.calib_method is None:
            return
        self.calib_method = _choice("calib-method", self.calib_method, CALIB_METHODS)
        if "calib_method" not in get_target(self.target).options or self.precision != "int8":
            raise SRShrinkError(f"--calib-method is for --target tflite --precision int8 (not {self.target} "
                                f"{self.precision}); the ONNX int8 export always takes 99.99 percentile ranges.")

    def _check_int8_scheme(self) -> None:
        given = [f for f, v in (("--reduce-range" if self.reduce_range else "--no-reduce-range",
                                 self.reduce_range is not None), ("--float-stream", self.float_stream),
                                ("--float-first-conv", self.float_first_conv),
                                ("--tail-refit" if self.tail_refit else "--no-tail-refit",
                                 self.tail_refit is not None)) if v]
        if given and (get_target(self.target).int8_scheme is None or self.precision != "int8"):
            raise SRShrinkError(f"{', '.join(given)} changes the ONNX int8 scheme; use it with --target onnx "
                                f"--precision int8 (not {self.target} {self.precision}).")

    def _check_qat(self) -> None:
        steps = self.qat_steps
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise SRShrinkError(f"--qat {steps!r}: must be a whole number of steps, 0 (off) or more.")
        if steps and self.precision != "int8":
            raise SRShrinkError(f"--qat fine-tunes for int8 exports; add --precision int8 (not {self.precision}) "
                                "or drop --qat.")
        if steps and self.tail_refit:
            raise SRShrinkError("--tail-refit fits the tail to the float student the file is made from, which after "
                                "--qat is the fine-tuned one, not yours (--qat already fits the whole file to yours); "
                                "drop one of them.")
        if not steps:
            given = [f for f, v in (("--qat-lr", self.qat_lr), ("--qat-target", self.qat_target),
                                    ("--teacher", self.teacher), ("--trust-pickle", self.trust_pickle)) if v]
            if given:
                raise SRShrinkError(f"{', '.join(given)} only applies to --qat STEPS; add --qat or drop it.")
        if self.qat_target is None:
            self.qat_target = "teacher" if self.teacher else "student"
        self.qat_target = _choice("qat-target", self.qat_target, QAT_TARGETS)
        if self.qat_target == "student" and (self.teacher or self.trust_pickle):
            given = ", ".join(f for f, v in (("--teacher", self.teacher), ("--trust-pickle", self.trust_pickle)) if v)
            raise SRShrinkError(f"{given} only applies to --qat-target teacher (the student target needs no teacher); "
                                "add --qat-target teacher or drop it.")
        if self.qat_lr is not None:
            lr = self.qat_lr
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and 0 < lr <= 1):
                raise SRShrinkError(f"--qat-lr {lr!r}: must be a number in (0, 1], e.g. 1e-4.")

    def _check_shapes(self) -> None:
        rec = get_target(self.target)
        takes_shapes = "shapes" in rec.options
        if self.shapes is None:  # Core ML: the enumerated default set, which the Neural Engine runs at every size
            if takes_shapes and self.input_size is None:
                self.shapes = COREML_SHAPES
            return
        if not takes_shapes:
            raise SRShrinkError("--shapes applies to Core ML only; use --input-size HxW for a fixed size.")
        if self.input_size is not None:
            raise SRShrinkError("pass either --shapes or --input-size, not both.")
        if isinstance(self.shapes, str) and self.shapes.strip().lower() == ANY_SHAPE:
            self.shapes = None  # RangeDim: any size, but the Neural Engine runs only the default one
            return
        self.shapes = parse_shapes(self.shapes, *rec.size_range)
        if len(self.shapes) == 1:  # EnumeratedShapes needs two or more: one size is a fixed input size
            self.input_size, self.shapes = self.shapes[0], None

    def _check_palettize(self) -> None:
        if self.palettize is None:
            return
        self.palettize = int(self.palettize)
        if "palettize" not in get_target(self.target).options:
            raise SRShrinkError("--palettize applies to Core ML only; use --precision int8 for other targets.")
        if self.palettize not in PALETTE_BITS:
            raise SRShrinkError(f"--palettize must be 4, 6 or 8 bits, not {self.palettize}.")
        if self.precision == "int8":
            raise SRShrinkError("--palettize and --precision int8 both compress the weights; pick one.")

    @property
    def tag(self) -> str:
        """Return the precision part of the file name: ``fp32``/``fp16``/``int8``/``w8a16``, ``pal4`` etc."""
        if self.palettize is None:
            return self.precision
        return f"pal{self.palettize}" if self.precision == "fp16" else f"{self.precision}_pal{self.palettize}"

    @property
    def calibrated(self) -> bool:
        """Return True when the export quantises activations (int8, w8a16) and so needs calibration inputs."""
        return get_target(self.target).calibrated(self.precision)

    @property
    def uses_calib(self) -> bool:
        """Return True when the export takes calibration inputs: it quantises activations, or (Core ML int8: int8
        weights only) it rounds the weights by GPTQ or corrects the biases for their rounding on them."""
        return self.calibrated or (self.precision == "int8" and bool(self.gptq or self.bias_correction))

    def shapes_the_file(self, name: str) -> bool:
        """Return False for a file-shaping option (a :data:`FILE_OPTIONS` field) that this export leaves unused:
        the calibration settings (``calib``, ``calib_samples``, ``bias_correction``, ``gptq``; ``seed`` unless QAT uses
        it) when the export takes no calibration inputs (:attr:`uses_calib`), ``equalize`` except on a calibrated
        int8 export."""
        if name in ("calib", "calib_samples", "bias_correction", "gptq"):
            return self.uses_calib
        if name == "seed":
            return self.uses_calib or bool(self.qat_steps)
        if name == "equalize":
            return self.calibrated and self.precision == "int8"
        return True

    @property
    def dynamic(self) -> bool:
        """Return True when the exported input height/width are left free (not fixed, not enumerated)."""
        return self.input_size is None and self.shapes is None

    def file_name(self, stage: int) -> str:
        """Return ``stage_XX_<tag><suffix>`` for ``stage``."""
        return f"stage_{stage:02d}_{self.tag}{get_target(self.target).suffix}"


def given_options(opts: dict, cfg: ExportConfig | None = None) -> dict:
    """Return the file-shaping options of an export call (:data:`FILE_OPTIONS`) that differ from
    :class:`ExportConfig`'s defaults, as JSON values in the command line's spelling (sizes as ``HxW``, paths as
    strings): export.json records them so that the file's command can be written back (:func:`option_args`).
    With the call's resolved ``cfg``, options it leaves unused (:meth:`ExportConfig.shapes_the_file`, e.g.
    ``--equalize`` on an fp32 export) are left out: the file is the one made without them."""
    defaults = {f.name: f.default for f in fields(ExportConfig) if f.default is not MISSING}
    return {name: _cli_value(opts[name]) for name in FILE_OPTIONS
            if opts.get(name) is not None and opts[name] != defaults.get(name)
            and (cfg is None or cfg.shapes_the_file(name))}


def unused_options_note(opts: dict, cfg: ExportConfig) -> str | None:
    """Return the note line for the options of an export call ``opts`` that its resolved ``cfg`` leaves unused
    (:meth:`ExportConfig.shapes_the_file`: ``--calib`` on fp32, ``--equalize`` on w8a16, ...), each spelled as
    given with what it is for; None when every given option is used."""
    unused = {k: v for k, v in given_options(opts).items() if not cfg.shapes_the_file(k)}
    if not unused:
        return None
    what = {"equalize": "int8", "seed": "int8, w8a16 or --qat"}
    flags = [f"{option_args({k: v})[0]} (for {what.get(k, 'int8 and w8a16')})" for k, v in unused.items()]
    verb = "does" if len(flags) == 1 else "do"
    return f"{', '.join(flags)} {verb} nothing for {cfg.precision} {cfg.target} files; ignored."


def _cli_value(value):
    """Return ``value`` as the command line spells it: a size (h, w) as ``HxW``, a list of sizes as
    ``HxW,HxW``, a path as a string; anything else as it is."""
    if isinstance(value, (tuple, list)):
        sizes_ = value if value and isinstance(value[0], (tuple, list)) else [value]
        return ",".join("x".join(str(v) for v in hw) for hw in sizes_)
    return str(value) if isinstance(value, Path) else value


def option_args(options: dict) -> list[str]:
    """Return the ``sr-shrink export`` arguments that give :func:`given_options`' record ``options``."""
    args: list[str] = []
    for name, value in options.items():
        flag = FILE_OPTIONS.get(name)
        if flag is None:
            continue
        if isinstance(value, bool):
            if name in ("reduce_range", "bias_correction", "gptq", "tail_refit"):  # on/off pairs: either default
                args.append(flag if value else "--no-" + flag[2:])
            elif value:
                args.append(flag)
            continue
        args += [flag, str(_cli_value(value))]
    return args


def _check_calib_memory(n: int, size: tuple[int, int] | None) -> None:
    """Refuse (SRShrinkError) ``n`` calibration inputs of ``size`` (None: the free-size exports' crops) that would
    take more than ``CALIB_MAX_BYTES`` of memory as float32 RGB, all of them held at once."""
    h, w = size or (CALIB_CROP, CALIB_CROP)
    each = 3 * h * w * 4
    if n * each > CALIB_MAX_BYTES:
        raise SRShrinkError(f"--calib-samples {n} of {h}x{w} would hold {n * each / 1e9:.1f} GB of calibration inputs "
                            f"in memory; use at most {CALIB_MAX_BYTES // each} (the default is "
                            f"{auto_calib_samples(size)}).")


def auto_calib_samples(size: tuple[int, int] | None) -> int:
    """Return the default number of calibration inputs: ~128 * 96 * 96 pixels in all, 8 to 128 inputs."""
    if size is None:
        return CALIB_PIXELS // (CALIB_CROP * CALIB_CROP)
    return max(8, min(128, round(CALIB_PIXELS / (size[0] * size[1]))))


def parse_shapes(shapes, lo: int = sizes.MIN_SIDE, hi: int = sizes.MAX_SIDE) -> tuple[tuple[int, int], ...]:
    """Return the (h, w) sizes of ``"default"``, ``"HxW,HxW,..."`` or a list of sizes (duplicates dropped), each
    side within [lo, hi]; ``"any"`` (a RangeDim input) is :class:`ExportConfig`'s to resolve, not a list."""
    if isinstance(shapes, str):
        if shapes.strip().lower() == "default":
            return COREML_SHAPES
        shapes = [s for s in shapes.split(",") if s.strip()]
    out = tuple(dict.fromkeys(parse_size(s, "--shapes", lo, hi) for s in shapes))
    if not out:
        raise SRShrinkError("--shapes needs at least one HxW size, e.g. 256x256,540x960, or 'default' or 'any'.")
    return out


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SRShrinkError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}.")
    return value


def parse_size(size: tuple[int, int] | list | str | None, option: str = "--input-size", lo: int = sizes.MIN_SIDE,
               hi: int = sizes.MAX_SIDE) -> tuple[int, int] | None:
    """Return (h, w) from ``"HxW"``, ``"N"`` (a square) or a pair (:func:`sr_shrink.sizes.parse_size`, the
    parser bench uses too), ``None`` for ``None``; an error for anything else."""
    return None if size is None else sizes.parse_size(size, option, lo, hi)
