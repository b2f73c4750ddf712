"""Export distilled students for phones: ONNX, Core ML and TFLite, each checked and verified.

Modules: ``targets`` (one :class:`Target` record per format, the registry), ``options``
(:class:`ExportConfig`, targets, defaults), ``wrapper`` (the mobile-safe model every
format converts), ``calib`` (int8 calibration inputs), one module per format (``onnx``, ``coreml``,
``tflite``), ``qat`` (data-free quantization-aware fine-tuning before int8), ``graph`` (rank and op allow-list
policy), ``verify`` (Y-PSNR against the PyTorch student within a stated tolerance) and ``pipeline``
(:func:`export_run`, which ties them together). Exported files are run through :mod:`sr_shrink.runtimes`; the
run folder and its export.json index are :class:`sr_shrink.run.RunDir`.
"""

from .graph import GraphInfo, check_graph
from .options import PRECISIONS, TARGETS, ExportConfig, parse_size
from .pipeline import export_run
from .targets import ALLOWED_OPS, Target, get_target
from .verify import TOLERANCE_DB
from .wrapper import MobileSR, build_wrapper

__all__ = ["ALLOWED_OPS", "PRECISIONS", "TARGETS", "TOLERANCE_DB", "ExportConfig", "GraphInfo", "MobileSR",
           "Target", "build_wrapper", "check_graph", "export_run", "get_target", "parse_size"]
