"""Pieces every export shares: options, run directories, graph checks, quiet library calls, ``export.json``.

``export.json`` (in the output folder) is ``{"sr_shrink_exports": 1, "run": {...}, "exports": [entry, ...]}``;
one entry per file, keyed by its ``file`` name, replaced when the same file is exported again.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib
import io
import json
import logging
import os
import re
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SRShrinkError
from ..io import atomic_write_json

TARGETS = ("onnx", "coreml", "tflite")
PRECISIONS = ("fp32", "fp16", "int8")
SUFFIX = {"onnx": ".onnx", "coreml": ".mlpackage", "tflite": ".tflite"}
DEFAULT_PRECISION = {"onnx": "fp32", "coreml": "fp16", "tflite": "fp32"}
DEFAULT_LAYOUT = {"onnx": "nchw", "coreml": "nchw", "tflite": "nhwc"}
DEFAULT_SHUFFLE = {"onnx": "native", "coreml": "native", "tflite": "native"}
TFLITE_DEFAULT_SIZE = (256, 256)
PALETTE_BITS = (4, 6, 8)
INDEX_NAME = "export.json"
CALIB_CROP = 96  # LR crop side of calibration photos for exports with free input size
CALIB_PIXELS = 128 * CALIB_CROP * CALIB_CROP
MAX_RANK = 4
STAGE_RE = re.compile(r"^stage_(\d{2,})\.pt$")

# Ops each target's graph may hold; anything else means the wrapper leaked an op a phone runtime may lack.
ALLOWED_OPS = {
    "onnx": {"Conv", "ConvTranspose", "Relu", "Add", "DepthToSpace", "Transpose", "Cast", "QuantizeLinear",
             "DequantizeLinear"},
    "coreml": {"const", "cast", "conv", "conv_transpose", "relu", "add", "pixel_shuffle", "depth_to_space",
               "transpose", "constexpr_affine_dequantize", "constexpr_lut_to_dense",
               "constexpr_blockwise_shift_scale"},
    "tflite": {"CONV_2D", "TRANSPOSE_CONV", "ADD", "DEPTH_TO_SPACE", "RESHAPE", "TRANSPOSE", "QUANTIZE",
               "DEQUANTIZE"},
}


@dataclass
class ExportConfig:
    """What to export and how; ``None`` fields take the target's default (see ``__post_init__``).

    ``input_size`` (h, w) fixes the LR input size (TFLite always has one, 256x256 by default); ``calib`` is
    ``"generator"``, a folder of images or ``None`` (generator.pt when the run has one, else the bundled eval
    images); ``native_io`` gives the model I/O in its own precision (fp16 for ONNX/Core ML fp16, int8 for
    TFLite int8) instead of float32; ``shuffle`` picks the wrapper's pixel-shuffle form ("native"/"convt");
    ``eval_images`` caps the verification images (``None``: all).
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

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise SRShrinkError(f"unknown export target {self.target!r}; choose one of {', '.join(TARGETS)}.")
        self.precision = self.precision or DEFAULT_PRECISION[self.target]
        if self.precision not in PRECISIONS:
            raise SRShrinkError(f"unknown precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}.")
        self.layout = _choice("layout", self.layout or DEFAULT_LAYOUT[self.target], ("nchw", "nhwc"))
        self.shuffle = _choice("shuffle", self.shuffle or DEFAULT_SHUFFLE[self.target], ("native", "convt"))
        self.input_size = parse_size(self.input_size)
        if self.input_size is None and self.target == "tflite":
            self.input_size = TFLITE_DEFAULT_SIZE
        self._check_palettize()
        if self.calib_samples is None:
            self.calib_samples = auto_calib_samples(self.input_size)
        if self.calib_samples < 1:
            raise SRShrinkError(f"--calib-samples must be at least 1, not {self.calib_samples}.")

    def _check_palettize(self) -> None:
        if self.palettize is None:
            return
        self.palettize = int(self.palettize)
        if self.target != "coreml":
            raise SRShrinkError("--palettize applies to Core ML only; use --precision int8 for other targets.")
        if self.palettize not in PALETTE_BITS:
            raise SRShrinkError(f"--palettize must be 4, 6 or 8 bits, not {self.palettize}.")
        if self.precision == "int8":
            raise SRShrinkError("--palettize and --precision int8 both compress the weights; pick one.")

    @property
    def tag(self) -> str:
        """Return the precision part of the file name: ``fp32``/``fp16``/``int8``, ``pal4`` etc."""
        if self.palettize is None:
            return self.precision
        return f"pal{self.palettize}" if self.precision == "fp16" else f"{self.precision}_pal{self.palettize}"

    @property
    def dynamic(self) -> bool:
        """Return True when the exported input height/width are left free."""
        return self.input_size is None

    def file_name(self, stage: int) -> str:
        """Return ``stage_XX_<tag><suffix>`` for ``stage``."""
        return f"stage_{stage:02d}_{self.tag}{SUFFIX[self.target]}"


def auto_calib_samples(size: tuple[int, int] | None) -> int:
    """Return the default number of calibration inputs: ~128 * 96 * 96 pixels in all, 8 to 128 inputs."""
    if size is None:
        return CALIB_PIXELS // (CALIB_CROP * CALIB_CROP)
    return max(8, min(128, round(CALIB_PIXELS / (size[0] * size[1]))))


def _choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise SRShrinkError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}.")
    return value


def parse_size(size: tuple[int, int] | list | str | None) -> tuple[int, int] | None:
    """Return (h, w) from ``"HxW"`` (or a pair), ``None`` for ``None``; an error for anything else."""
    if size is None:
        return None
    if isinstance(size, str):
        m = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", size)
        if not m:
            raise SRShrinkError(f"--input-size {size!r}: expected HxW, e.g. 256x256.")
        size = (int(m.group(1)), int(m.group(2)))
    h, w = (int(v) for v in size)
    if min(h, w) < 4 or max(h, w) > 8192:
        raise SRShrinkError(f"--input-size {h}x{w}: height and width must be between 4 and 8192.")
    return h, w


def require(extra: str, *modules: str) -> list[Any]:
    """Return the imported ``modules``; one clear SRShrinkError naming the pip extra if any is missing."""
    loaded = []
    for name in modules:
        try:
            with quiet():
                loaded.append(importlib.import_module(name))
        except ImportError as exc:
            raise SRShrinkError(f"the {extra} export needs the Python package '{name.split('.')[0]}', which is "
                                f"not importable ({str(exc).splitlines()[0][:80]}); "
                                f"pip install 'sr-shrink[{extra}]'") from None
    return loaded


@dataclass
class RunInfo:
    """A distill run directory (or a lone stage file): where it is, its run.json, stage files, generator."""

    root: Path
    run: dict
    stages: dict[int, Path]
    generator: Path | None


def open_run(path: str | Path) -> RunInfo:
    """Return the :class:`RunInfo` of a run directory or a single ``stage_XX.pt``; an error if neither."""
    path = Path(path)
    if path.is_file():
        m = STAGE_RE.match(path.name)
        stage = int(m.group(1)) if m else _stage_from_ckpt(path)
        return RunInfo(path.parent, _read_run_json(path.parent), {stage: path}, _generator(path.parent))
    if not path.is_dir():
        raise SRShrinkError(f"{path}: no such run directory or stage_XX.pt file.")
    stages = {int(m.group(1)): p for p in path.iterdir() if (m := STAGE_RE.match(p.name))}
    if not stages:
        raise SRShrinkError(f"{path}: not a distill run (no stage_XX.pt files); pass the folder "
                            "'sr-shrink distill' wrote, or one stage_XX.pt.")
    return RunInfo(path, _read_run_json(path), dict(sorted(stages.items())), _generator(path))


def _stage_from_ckpt(path: Path) -> int:
    from ..models.student import load_student

    _, ckpt = load_student(path)
    return int(ckpt.get("stage", 1))


def _generator(root: Path) -> Path | None:
    p = root / "generator.pt"
    return p if p.is_file() else None


def _read_run_json(root: Path) -> dict:
    p = root / "run.json"
    if not p.is_file():
        return {}
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise SRShrinkError(f"{p}: unreadable run.json ({exc}).") from None
    return data if isinstance(data, dict) else {}


def select_stages(info: RunInfo, stage: int | str) -> list[int]:
    """Return the stage numbers ``stage`` ("all", "last" or a number) names; an error if one is missing."""
    have = sorted(info.stages)
    if isinstance(stage, str) and stage.strip().lower() in ("all", "last"):
        return have if stage.strip().lower() == "all" else have[-1:]
    try:
        n = int(stage)
    except (TypeError, ValueError):
        raise SRShrinkError(f"--stage {stage!r}: pass a stage number, 'all' or 'last'.") from None
    if n not in info.stages:
        raise SRShrinkError(f"{info.root}: no stage {n}; this run has stage(s) {', '.join(map(str, have))}.")
    return [n]


def stage_record(info: RunInfo, stage: int) -> dict:
    """Return run.json's record of ``stage`` (empty when the run has no run.json)."""
    for rec in info.run.get("stages", []):
        if isinstance(rec, dict) and rec.get("stage") == stage:
            return rec
    return {}


@contextlib.contextmanager
def quiet():
    """Silence library chatter inside the block: warnings, logging, prints and C-level stdout/stderr.

    Set ``SR_SHRINK_VERBOSE=1`` to see it all. Exceptions still propagate.
    """
    if os.environ.get("SR_SHRINK_VERBOSE"):
        yield
        return
    prev_disable = logging.root.manager.disable
    logging.disable(logging.WARNING)
    with warnings.catch_warnings(), _fd_silenced(), contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            logging.disable(prev_disable)


@contextlib.contextmanager
def _fd_silenced():
    for s in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            s.flush()
    try:
        saved = [os.dup(1), os.dup(2)]
    except OSError:  # no real file descriptors (embedded interpreter)
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, devnull):
            os.close(fd)


@dataclass
class GraphInfo:
    """What an exported graph holds: op counts, the highest tensor rank, tensors above rank 4, I/O specs."""

    ops: dict[str, int]
    max_rank: int
    high_rank: list[str] = field(default_factory=list)
    inputs: list[dict] = field(default_factory=list)
    outputs: list[dict] = field(default_factory=list)


def check_graph(target: str, graph: GraphInfo) -> dict:
    """Return the check record for ``graph``; raise SRShrinkError if a tensor has rank > 4 or an op is not
    on the ``target``'s allow-list."""
    if graph.high_rank:
        raise SRShrinkError(f"{target} graph has tensors of rank > {MAX_RANK} (max {graph.max_rank}): "
                            f"{', '.join(graph.high_rank[:5])}; phone delegates reject them.")
    extra = sorted(set(graph.ops) - ALLOWED_OPS[target])
    if extra:
        raise SRShrinkError(f"{target} graph uses ops outside the mobile allow-list: {', '.join(extra)}.")
    return {"max_rank": graph.max_rank, "rank_ok": True, "ops_allowed": True}


def path_size(path: Path) -> int:
    """Return the size in bytes of a file, or of all files under a folder (an .mlpackage)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def run_summary(info: RunInfo) -> dict:
    """Return the run-level facts export.json repeats (scale, mode, seed, teacher and bicubic PSNR)."""
    keys = ("scale", "mode", "seed", "teacher_psnr_y", "bicubic_psnr_y")
    return {"path": str(info.root), **{k: info.run[k] for k in keys if k in info.run}}


def update_index(out_dir: Path, entries: list[dict], info: RunInfo) -> Path:
    """Merge ``entries`` into ``out_dir/export.json`` (same ``file`` replaced); return its path."""
    path = out_dir / INDEX_NAME
    old = _read_index(path)
    by_file = {e["file"]: e for e in old.get("exports", []) if isinstance(e, dict) and "file" in e}
    for e in entries:
        by_file[e["file"]] = {k: v for k, v in e.items() if k != "path"}
    data = {"sr_shrink_exports": 1, "updated": now_iso(), "run": run_summary(info),
            "exports": [by_file[k] for k in sorted(by_file)]}
    return atomic_write_json(data, path)


def _read_index(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # a damaged index is rebuilt from this call's entries
    return data if isinstance(data, dict) else {}


def now_iso() -> str:
    """Return the current UTC time as an ISO 8601 string (seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
