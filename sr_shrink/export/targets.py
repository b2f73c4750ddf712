"""One record per export target and the registry every reader uses (CLI, demo, bench, the export pipeline).

Each format module (``onnx``, ``coreml``, ``tflite``) defines its :class:`Target` and adds it with
:func:`register`, which refuses a second record under the same name. :data:`TARGETS` maps name -> record in
registration order (onnx, coreml, tflite); the old tables (``options.TARGETS``, ``options.SUFFIX``,
``export.ALLOWED_OPS``, ...) are views of it. ``graph.check_graph`` reads a target's ``allowed_ops`` here;
:mod:`sr_shrink.runtimes` stays below the export layer, so each record names its runner (``runtime``) and a
test checks the runner's suffix is the record's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..errors import SRShrinkError


@dataclass(frozen=True)
class Int8Option:
    """An export option measured on the teacher panel to bring a target's int8 files closer to the fp32 student
    (BENCHMARKS.md sections 19, 23, 25), which ``export`` names when an int8 file loses more than
    :data:`~sr_shrink.export.verify.INT8_NEAR`.

    ``args``: as typed; ``field``: the :class:`~sr_shrink.export.options.ExportConfig` field it sets (None: another
    precision, never given with int8); ``value``: that field's value when given (None: any value); ``when``: the
    trade-off, shown in brackets.
    """

    args: str
    field: str | None
    value: object = None
    when: str = ""

    def given(self, options: dict) -> bool:
        """Return True when an export's recorded ``options`` (export.json) already set this option."""
        return self.field in options and (self.value is None or options[self.field] == self.value)


@dataclass(frozen=True)
class Target:
    """What sr-shrink knows about one export target.

    ``runtime`` names the :mod:`sr_shrink.runtimes` runner that opens its files; ``converter`` the module whose
    presence means it can be exported here; ``quantizes_activations``: int8/w8a16 exports are calibrated;
    ``fixed_size``: the LR input size used when none is given (None: free size, within ``size_range``);
    ``options``: the target-specific options it accepts ("shapes", "palettize", "image_io", "w8a16",
    "calib_method");
    ``int8_scheme``: what its int8 exporter quantizes (QAT mirrors it); ``check_io`` / ``verify_shapes``:
    extra verification steps (or None); ``benched``: ``sr-shrink bench`` times it; ``int8_closer``: the
    :class:`Int8Option` s that measured closer to the fp32 student than its default int8 file; ``gptq_by_default``:
    the precisions whose weights are GPTQ-rounded unless ``--no-gptq`` (:mod:`~sr_shrink.export.gptq`; measured on
    the panel, BENCHMARKS.md sections 34 and 36); ``bias_correction_by_default``: those whose biases are corrected
    for the weights' rounding unless ``--no-bias-correction`` (sections 27 and 36); ``pixel_tail``: its int8 file
    rounds the tail conv's output on the output's own 8-bit grid (TFLite,
    :func:`~sr_shrink.export.tflite.align_to_pixel_grid`, wherever the tail's calibrated range fits it), so QAT
    leaves it unrounded.
    """

    name: str
    suffix: str
    default_precision: str
    default_layout: str
    allowed_ops: frozenset[str]
    runtime: str
    converter: str
    require: Callable
    export: Callable
    graph: Callable
    size_range: tuple[int, int]
    demo_precisions: tuple[str, ...]
    quantizes_activations: bool = True
    fixed_size: tuple[int, int] | None = None
    options: frozenset[str] = frozenset({"w8a16"})
    default_shuffle: str = "native"
    int8_scheme: object = None
    check_io: Callable | None = None
    verify_shapes: Callable | None = None
    benched: bool = False
    int8_closer: tuple[Int8Option, ...] = ()
    gptq_by_default: frozenset[str] = frozenset({"w8a16"})
    bias_correction_by_default: frozenset[str] = frozenset({"w8a16"})
    pixel_tail: bool = False

    def calibrated(self, precision: str) -> bool:
        """Return True when an export at ``precision`` quantises activations and so needs calibration inputs."""
        return self.quantizes_activations and precision in ("int8", "w8a16")

    def scheme_for(self, cfg) -> object:
        """Return the :class:`~sr_shrink.export.onnx.Int8Scheme` this target's int8 exporter uses for the export
        ``cfg`` (its ``--[no-]reduce-range`` / ``--float-stream`` / ``--float-first-conv`` / ``--[no-]tail-refit``
        applied), or None when the target has none (TFLite, Core ML). The exporter and everything that mirrors it
        (QAT, bias correction) ask here."""
        scheme = self.int8_scheme
        return None if scheme is None else scheme.with_options(cfg.reduce_range, cfg.float_stream, cfg.tail_refit,
                                                           cfg.float_first_conv)


TARGETS: dict[str, Target] = {}


def register(target: Target) -> Target:
    """Add ``target`` to :data:`TARGETS` and return it; a second record under the same name is an error."""
    if target.name in TARGETS:
        raise ValueError(f"export target {target.name!r} is registered twice")
    TARGETS[target.name] = target
    return target


def get_target(name: str) -> Target:
    """Return the record of target ``name``; SRShrinkError naming the choices for an unknown one."""
    if name not in TARGETS:
        raise SRShrinkError(f"unknown export target {name!r}; choose one of {', '.join(TARGETS)}.")
    return TARGETS[name]


def benched_targets() -> dict[str, str]:
    """Return {runtime: target} for the targets ``sr-shrink bench`` times."""
    return {t.runtime: t.name for t in TARGETS.values() if t.benched}


from . import coreml as _coreml  # noqa: E402 - each format module defines its record
from . import onnx as _onnx  # noqa: E402
from . import tflite as _tflite  # noqa: E402

for _target in (_onnx.TARGET, _coreml.TARGET, _tflite.TARGET):
    register(_target)

ALLOWED_OPS = {n: t.allowed_ops for n, t in TARGETS.items()}  # view kept for existing importers
