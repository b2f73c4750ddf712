"""Find the exported model a benchmark row needs in ``RUN_DIR/exports``, or make it with ``sr_shrink.export``.

Runtime "onnxruntime" runs target "onnx" files, "litert" runs target "tflite" files. TFLite graphs have a
static input size, so a .tflite is reused only when its input is the bench input size; otherwise one is
exported at that size into ``RUN_DIR/exports/bench_<h>x<w>/`` (the user's own exports are left untouched).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ..errors import SRShrinkError
from .runtimes import open_runner

TARGETS = {"onnxruntime": "onnx", "litert": "tflite"}
SUFFIX = {"onnx": ".onnx", "tflite": ".tflite"}
Exporter = Callable[[Path, int, str, str, tuple[int, int]], Path]


def export_name(stage: int, runtime: str, precision: str) -> str:
    """Return the file name ``sr_shrink.export`` gives a stage: ``stage_XX_<precision>.<onnx|tflite>``."""
    return f"stage_{stage:02d}_{precision}{SUFFIX[TARGETS[runtime]]}"


def _listed(run_dir: Path, stage: int, runtime: str, precision: str) -> list[Path]:
    """Return the paths ``export.json`` lists for this stage, target and precision (may be empty)."""
    index = run_dir / "exports" / "export.json"
    try:
        data = json.loads(index.read_text())
    except (OSError, ValueError):
        return []
    entries = data.get("exports", data.get("entries", [])) if isinstance(data, dict) else data
    found = []
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, dict) or e.get("target") != TARGETS[runtime] or e.get("precision") != precision:
            continue
        p = Path(e.get("path") or e.get("file") or "")
        p = p if p.is_absolute() or p.exists() else run_dir / "exports" / p
        if e.get("stage") == stage or ("stage" not in e and p.name == export_name(stage, runtime, precision)):
            found.append(p)
    return found


def fits(path: Path, input_hw: tuple[int, int]) -> bool:
    """Return True if the model at ``path`` accepts inputs of ``input_hw`` (dynamic or exactly that size)."""
    try:
        runner = open_runner(path, threads=1)
    except SRShrinkError:
        return False
    return runner.input_hw is None or tuple(runner.input_hw) == tuple(input_hw)


def find_export(run_dir: Path, stage: int, runtime: str, precision: str, input_hw: tuple[int, int]) -> Path | None:
    """Return an existing export for this row that fits ``input_hw``, or None."""
    name = export_name(stage, runtime, precision)
    bench_dir = run_dir / "exports" / f"bench_{input_hw[0]}x{input_hw[1]}"
    candidates = _listed(run_dir, stage, runtime, precision) + [run_dir / "exports" / name, bench_dir / name]
    for p in dict.fromkeys(candidates):
        if p.is_file() and fits(p, input_hw):
            return p
    return None


def export_with_api(run_dir: Path, stage: int, runtime: str, precision: str, input_hw: tuple[int, int]) -> Path:
    """Export one stage with ``sr_shrink.export.export_run`` and return the written file's path."""
    try:
        from ..export import export_run
    except ImportError:
        raise SRShrinkError("sr_shrink.export is not available in this install; cannot export models to "
                            "benchmark.") from None
    target = TARGETS[runtime]
    out = run_dir / "exports"
    if (out / export_name(stage, runtime, precision)).exists():
        out = out / f"bench_{input_hw[0]}x{input_hw[1]}"  # keep the user's export of another size
    opts = {"verify": False}  # bench scores every row itself
    if target == "tflite":
        opts["input_size"] = tuple(input_hw)
    entries = export_run(run_dir, target, stage=stage, precision=precision, out=out, **opts)
    for e in entries:
        p = Path(e.get("path") or e.get("file") or "")
        p = p if p.is_absolute() or p.exists() else out / p
        if p.suffix == SUFFIX[target] and p.is_file():
            return p
    raise SRShrinkError(f"exporting stage {stage} to {target} {precision} wrote no {SUFFIX[target]} file.")


def ensure_export(run_dir: Path, stage: int, runtime: str, precision: str, input_hw: tuple[int, int],
                  exporter: Exporter | None = None) -> tuple[Path, bool]:
    """Return (path of a model file for this row, whether it was exported now)."""
    found = find_export(run_dir, stage, runtime, precision, input_hw)
    if found is not None:
        return found, False
    return (exporter or export_with_api)(run_dir, stage, runtime, precision, input_hw), True
