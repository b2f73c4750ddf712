"""Find the exported model a benchmark row needs in ``RUN_DIR/exports``, or make it with ``sr_shrink.export``.

The export target each runtime runs comes from :mod:`sr_shrink.export.targets` ("onnxruntime" runs "onnx"
files, "litert" runs "tflite" files). Targets with a fixed input size (TFLite) are reused only when their
input is the bench input size; otherwise one is
exported at that size into ``RUN_DIR/exports/bench_<h>x<w>/`` (the user's own exports are left untouched).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..errors import SRShrinkError
from ..export.options import option_args
from ..export.targets import TARGETS as REGISTRY
from ..export.targets import benched_targets
from ..run import RunDir
from ..runtimes import open_runner

TARGETS = benched_targets()  # runtime -> export target whose files it runs
SUFFIX = {t: REGISTRY[t].suffix for t in TARGETS.values()}

Exporter = Callable[[RunDir, int, str, str, tuple[int, int]], Path]


def export_name(stage: int, runtime: str, precision: str) -> str:
    """Return the file name ``sr_shrink.export`` gives a stage: ``stage_XX_<precision>.<onnx|tflite>``."""
    return f"stage_{stage:02d}_{precision}{SUFFIX[TARGETS[runtime]]}"


def _listed(run: RunDir, stage: int, runtime: str, precision: str) -> list[Path]:
    """Return the files RUN_DIR/exports/export.json lists for this stage, target and precision."""
    return [p for e, p in run.index_paths()
            if e.get("target") == TARGETS[runtime] and e.get("tag", e.get("precision")) == precision
            and e.get("stage") == stage]


def row_files(run: RunDir, stages: list[int], runtimes: list[str], precisions: tuple[str, ...]) -> list[str]:
    """Return the sorted file names the exported rows of ``stages`` x ``runtimes`` x ``precisions`` can run: the
    name export gives each, and the files RUN_DIR/exports/export.json lists for it (torch rows run stage_XX.pt
    and have none). Known before any row is opened or exported."""
    names: set[str] = set()
    for stage in stages:
        for runtime in (r for r in runtimes if r in TARGETS):
            for precision in precisions:
                names.add(export_name(stage, runtime, precision))
                names.update(p.name for p in _listed(run, stage, runtime, precision))
    return sorted(names)


def fits(path: Path, input_hw: tuple[int, int]) -> bool:
    """Return True if the model at ``path`` accepts inputs of ``input_hw`` (any size, that size, or one of the
    sizes it enumerates)."""
    try:
        runner = open_runner(path, threads=1)
    except SRShrinkError:
        return False
    return runner.takes(input_hw)


def find_export(run: RunDir, stage: int, runtime: str, precision: str, input_hw: tuple[int, int]) -> Path | None:
    """Return an existing export for this row that fits ``input_hw``, or None."""
    name = export_name(stage, runtime, precision)
    bench_dir = run.exports_dir / f"bench_{input_hw[0]}x{input_hw[1]}"
    candidates = _listed(run, stage, runtime, precision) + [run.exports_dir / name, bench_dir / name]
    for p in dict.fromkeys(candidates):
        if p.is_file() and fits(p, input_hw):
            return p
    return None


def export_with_api(run: RunDir, stage: int, runtime: str, precision: str, input_hw: tuple[int, int],
                    log: Callable[[str], None] | None = None) -> Path:
    """Export one stage with ``sr_shrink.export.export_run`` and return the written file's path (``log``: the
    export's notes, e.g. a generator.pt it could not read and calibrated without)."""
    from ..export import export_run
    target = TARGETS[runtime]
    out = run.exports_dir
    if (out / export_name(stage, runtime, precision)).exists():
        out = out / f"bench_{input_hw[0]}x{input_hw[1]}"  # keep the user's export of another size
    opts = {"verify": False}  # bench scores every row itself
    if REGISTRY[target].fixed_size is not None:  # a fixed-size target is exported at the bench size
        opts["input_size"] = tuple(input_hw)
    entries = export_run(run, target, stage=stage, precision=precision, out=out, log=log, **opts)
    for e in entries:
        p = out / Path(e["path"]).name  # under the run folder as given, like the files bench finds
        if p.suffix == SUFFIX[target] and p.is_file():
            return p
    raise SRShrinkError(f"exporting stage {stage} to {target} {precision} wrote no {SUFFIX[target]} file.")


def ensure_export(run: RunDir, stage: int, runtime: str, precision: str, input_hw: tuple[int, int],
                  exporter: Exporter | None = None) -> tuple[Path, bool]:
    """Return (path of a model file for this row, whether it was exported now)."""
    found = find_export(run, stage, runtime, precision, input_hw)
    if found is not None:
        return found, False
    return (exporter or export_with_api)(run, stage, runtime, precision, input_hw), True


def export_command(run: RunDir, path: Path) -> str | None:
    """Return the ``sr-shrink export`` command line that writes the file at ``path`` (from its export.json entry:
    target, stage, precision, the options the export was given (``options``; older entries: input size, layout,
    native I/O, QAT and calibration seed from their fields) and the output folder), or None when no export.json
    of its folder lists it (e.g. a torch row's stage_XX.pt)."""
    path = Path(path)
    entry = _entry(run, path)
    if entry is None:
        return None
    target = entry.get("target")
    parts = ["sr-shrink", "export", str(run.root), "--target", str(target), "--stage", str(entry.get("stage"))]
    if entry.get("precision"):
        parts += ["--precision", str(entry["precision"])]
    parts += option_args(_options(entry))
    if path.parent.resolve() != run.exports_dir.resolve():
        parts += ["--out", str(path.parent)]
    return " ".join(parts)


def file_options(run: RunDir, path: Path) -> dict | None:
    """Return the options the file at ``path`` was exported with beyond the defaults (:func:`export_command`'s
    record, without ``input_size``, which bench sets itself), or None when no export.json lists it."""
    entry = _entry(run, Path(path))
    return None if entry is None else {k: v for k, v in _options(entry).items() if k != "input_size"}


def _entry(run: RunDir, path: Path) -> dict | None:
    """Return the export.json entry of its folder that lists the file at ``path``, or None."""
    return next((e for e, p in run.index_paths(path.parent) if Path(p).resolve() == path.resolve()), None)


def _options(entry: dict) -> dict:
    """Return an export.json entry's record of the options its export was given (rebuilt for old entries)."""
    options = entry.get("options")
    options = options if isinstance(options, dict) else _legacy_options(entry, entry.get("target"))
    if entry.get("precision") == "w8a16" and "bias_correction" not in entry and "bias_correction" not in options:
        options = {**options, "bias_correction": False}  # made before w8a16 corrected its biases by default
    return options


def _legacy_options(entry: dict, target: str) -> dict:
    """Return the options record (:func:`~sr_shrink.export.options.given_options`' form) of an export.json entry
    written before entries held one, rebuilt from its fields: palette, input size, layout, native I/O, QAT steps
    and calibration seed."""
    opts: dict = {}
    tag = str(entry.get("tag") or "")
    if "pal" in tag:
        opts["palettize"] = tag.rsplit("pal", 1)[1]
    if entry.get("input_size"):
        opts["input_size"] = entry["input_size"]
    default_layout = REGISTRY[target].default_layout if target in TARGETS.values() else None  # benched targets
    if entry.get("layout") and entry["layout"] != default_layout:
        opts["layout"] = entry["layout"]
    if entry.get("io_dtype") not in (None, "float32"):
        opts["native_io"] = True
    if entry.get("qat_steps"):
        opts["qat_steps"] = entry["qat_steps"]
    seed = (entry.get("calibration") or {}).get("seed")
    if seed:
        opts["seed"] = seed
    return opts
