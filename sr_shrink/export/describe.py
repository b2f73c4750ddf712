"""What an exported model file holds, for ``sr-shrink info FILE.onnx|.tflite|.mlpackage``.

:func:`describe_export` opens the file with its runtime's runner (:func:`sr_shrink.runtimes.open_runner`) and
reads, without the run folder: the metadata ``sr-shrink export`` writes into every file (scale, stage, blocks,
precision, teacher, the student's Y-PSNR), the input's layout, dtype and sizes (fixed, enumerated or free), the
graph's ops and the file's size. The scale is the metadata's, else found by running one small input (a file
another tool wrote). Where the export.json beside the file lists it, its entry adds what only the export knew:
the verification against the PyTorch student and, for TFLite, the GPU-delegate report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import SRShrinkError, first_line
from ..io import read_json_object
from ..run import INDEX_NAME
from ..runtimes import open_runner
from .targets import TARGETS

FORMATS = {"onnx": "ONNX", "tflite": "TFLite (LiteRT flatbuffer)", "coreml": "Core ML ML Program (.mlpackage)"}


@dataclass
class ExportedInfo:
    """An exported file as :func:`describe_export` finds it: ``target`` (onnx, tflite, coreml), ``scale``,
    ``scale_from`` ("metadata" or "probe"), the input's ``layout``, ``io_dtype`` and ``input_sizes`` (one fixed
    size, the enumerated ones, or None: free), the ``ops`` it holds, ``size_bytes``, its embedded ``metadata``
    and the export.json ``entry`` beside it (None when there is none)."""

    path: str
    target: str
    runtime: str
    scale: int
    scale_from: str
    layout: str
    io_dtype: str
    input_sizes: list[tuple[int, int]] | None
    ops: dict[str, int]
    size_bytes: int
    metadata: dict = field(default_factory=dict)
    entry: dict | None = None

    def to_dict(self) -> dict:
        """Return the info as a JSON-ready dict (``info --json``)."""
        d = asdict(self)
        d["input_sizes"] = None if self.input_sizes is None else [list(s) for s in self.input_sizes]
        return d


def _size_bytes(path: Path) -> int:
    if path.is_dir():  # an .mlpackage is a folder
        return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    return path.stat().st_size


def _index_entry(path: Path) -> dict | None:
    """Return the entry of the export.json beside ``path`` that lists it, or None."""
    index = path.parent / INDEX_NAME
    if not index.is_file():
        return None
    try:
        entries = read_json_object(index, INDEX_NAME).get("exports")
    except SRShrinkError:
        return None
    return next((e for e in entries if isinstance(e, dict) and e.get("file") == path.name), None) \
        if isinstance(entries, list) else None


def _scale(runner, metadata: dict) -> tuple[int, str]:
    """Return (the file's upscaling factor, where it came from): the metadata's ``scale``, else one run of the
    file (:meth:`~sr_shrink.runtimes.Runner.probe_scale`)."""
    try:
        scale = int(str(metadata.get("scale")))
        if scale >= 1:
            return scale, "metadata"
    except ValueError:
        pass
    try:
        return runner.probe_scale()[0], "probe"
    except SRShrinkError:
        raise
    except Exception as exc:  # noqa: BLE001 - any runtime's failure on the probe is the file's problem
        raise SRShrinkError(f"{runner.path}: running it once failed ({first_line(exc)}).") from None


def describe_export(path: str | Path) -> ExportedInfo:
    """Return the :class:`ExportedInfo` of the exported model at ``path``; a one-line SRShrinkError for a file that
    is missing, of another type, or that its runtime cannot load (naming the pip extra when it is not installed)."""
    path = Path(path)
    runner = open_runner(path)
    target = next(t.name for t in TARGETS.values() if t.suffix == path.suffix.lower())
    try:
        ops = dict(TARGETS[target].graph(path).ops)
    except Exception:  # noqa: BLE001 - a graph the reader cannot walk still has its I/O and metadata
        ops = {}
    scale, scale_from = _scale(runner, runner.metadata)
    if runner.input_hw is not None:
        sizes = [tuple(runner.input_hw)]
    else:
        sizes = [tuple(s) for s in runner.input_sizes] if runner.input_sizes else None
    return ExportedInfo(str(path), target, runner.label, scale, scale_from, runner.layout, runner.io_dtype, sizes,
                        ops, _size_bytes(path), dict(runner.metadata), _index_entry(path))


def info_rows(info: ExportedInfo) -> list[tuple[str, str]]:
    """Return the (label, value) rows ``sr-shrink info`` prints for an exported file."""
    meta, entry = info.metadata, info.entry or {}
    made_by = meta.get("producer") or "not sr-shrink (no sr-shrink metadata)"
    rows = [("format", FORMATS[info.target]), ("made by", made_by), ("runs with", info.runtime),
            ("scale", f"x{info.scale}" + (" (found by running it)" if info.scale_from == "probe" else ""))]
    if meta.get("stage") is not None:
        what = f"stage {meta['stage']}"
        if meta.get("n_blocks") is not None:
            what += f" ({meta['n_blocks']} blocks, {meta.get('channels', '?')} ch, {int(meta.get('params', 0)):,} " \
                    "params)"
        rows.append(("student", what))
    if meta.get("teacher"):
        rows.append(("teacher", str(meta["teacher"])))
    precision = meta.get("precision") or entry.get("tag")
    if precision:
        rows.append(("precision", str(precision)))
    if info.input_sizes is None:
        sizes = "any height and width"
    elif len(info.input_sizes) == 1:
        sizes = "fixed {}x{}".format(*info.input_sizes[0])
    else:
        sizes = "enumerated " + ", ".join(f"{h}x{w}" for h, w in info.input_sizes)
    io = "RGB image" if meta.get("io") == "image" else f"{info.io_dtype} {info.layout.upper()}"
    rows.append(("input", f"{io}, {sizes} (LR), batch 1"))
    if meta.get("val_psnr_y") is not None:
        rows.append(("student Y-PSNR", f"{float(meta['val_psnr_y']):.2f} dB (its run's eval images)"))
    verification = entry.get("verification")
    if isinstance(verification, dict) and verification.get("delta_psnr_y") is not None:
        ok = "verified" if verification.get("verified") else "NOT verified"
        rows.append(("verification", f"{ok}: Y-PSNR {verification['psnr_y']:.4f} against the PyTorch student's "
                                     f"{verification['torch_psnr_y']:.4f} ({verification['delta_psnr_y']:+.4f} dB, "
                                     f"{verification.get('runtime', '?')})"))
    gpu = (entry.get("delegates") or {}).get("gpu")
    if isinstance(gpu, dict):
        reasons = "; ".join(str(r) for r in gpu.get("reasons") or [])
        rows.append(("GPU delegate", "runs on it" if gpu.get("ok") else f"falls back to the CPU: {reasons}"))
    rows.append(("ops", ", ".join(f"{k} {v}" for k, v in sorted(info.ops.items(), key=lambda kv: -kv[1])) or "-"))
    rows.append(("size", f"{info.size_bytes / 1024:,.1f} KiB"))
    if info.entry is None:
        rows.append(("export.json", "none beside it lists this file"))
    return rows
