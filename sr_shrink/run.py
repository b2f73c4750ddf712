"""A distill run folder, read (and written) in one place: :class:`RunDir`.

What ``sr-shrink distill --out RUN_DIR`` leaves there, and the rules every command reads it by:

- ``stage_XX.pt``: one student per finished stage; the stages of a run are the files of that name present;
- ``run.json``: the run's record (scale, teacher, mode, ``stages`` records, teacher/bicubic PSNR); optional
  for export (``{}`` when absent), required by bench; unreadable JSON is an error, never guessed around;
- ``generator.pt``: the data-free generator, when the mode trained one;
- ``state.pt``: distill's resumable state while a run is unfinished (removed when it completes);
- ``exports/``: the default export folder, with its ``export.json`` index:
  ``{"sr_shrink_exports": 1, "updated": ..., "run": {...}, "exports": [entry, ...]}``, one entry per file,
  keyed by its ``file`` name (relative to the index's folder), replaced when that file is exported again.

A lone ``stage_XX.pt`` opens as a run of that one stage, with the run.json and generator beside it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from .errors import SRShrinkError, first_line
from .io import atomic_write_json

STAGE_RE = re.compile(r"^stage_(\d{2,})\.pt$")
RUN_JSON = "run.json"
GENERATOR = "generator.pt"
STATE = "state.pt"
LOCK = ".lock"
EXPORTS = "exports"
INDEX_NAME = "export.json"
SUMMARY_KEYS = ("scale", "mode", "seed", "teacher_psnr_y", "bicubic_psnr_y")


def now_iso() -> str:
    """Return the current UTC time as an ISO 8601 string (seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def stage_file(stage: int) -> str:
    """Return the checkpoint name of ``stage``: ``stage_XX.pt``."""
    return f"stage_{stage:02d}.pt"


def _read_json_object(path: Path, what: str) -> dict:
    """Return the JSON object in ``path`` ({} if the file is absent); an error if it is not one."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise SRShrinkError(f"{path}: unreadable {what} ({first_line(exc)}).") from None
    if not isinstance(data, dict):
        raise SRShrinkError(f"{path}: {what} does not hold a JSON object.")
    return data


@dataclass
class RunDir:
    """A distill run folder (or a lone stage file): ``root``, its ``run`` (run.json, {} if absent),
    ``stages`` {stage number: checkpoint path} and ``generator`` (generator.pt or None)."""

    root: Path
    run: dict
    stages: dict[int, Path]
    generator: Path | None = None

    @classmethod
    def open(cls, path: str | Path | RunDir) -> RunDir:
        """Return the RunDir of a run folder or of a single ``stage_XX.pt``; an error if it is neither."""
        if isinstance(path, RunDir):
            return path
        path = Path(path)
        if path.is_file():
            m = STAGE_RE.match(path.name)
            stage = int(m.group(1)) if m else _stage_from_ckpt(path)
            return cls(path.parent, _read_json_object(path.parent / RUN_JSON, RUN_JSON), {stage: path},
                       _generator(path.parent))
        if not path.is_dir():
            raise SRShrinkError(f"{path}: no such run directory or stage_XX.pt file.")
        stages = {int(m.group(1)): p for p in path.iterdir() if (m := STAGE_RE.match(p.name)) and p.is_file()}
        if not stages:
            raise SRShrinkError(f"{path}: not a distill run (no stage_XX.pt files); pass the folder "
                                "'sr-shrink distill' wrote, or one stage_XX.pt.")
        return cls(path, _read_json_object(path / RUN_JSON, RUN_JSON), dict(sorted(stages.items())),
                   _generator(path))

    @classmethod
    def create(cls, path: str | Path) -> RunDir:
        """Return the RunDir of a folder a writer (distill) is filling: made if missing, with whatever
        run.json, stage files and generator it already holds (none is fine)."""
        root = Path(path)
        if root.exists() and not root.is_dir():
            raise SRShrinkError(f"{root}: exists and is not a folder; pass a folder for the run.")
        root.mkdir(parents=True, exist_ok=True)
        stages = {int(m.group(1)): p for p in root.iterdir() if (m := STAGE_RE.match(p.name)) and p.is_file()}
        return cls(root, _read_json_object(root / RUN_JSON, RUN_JSON), dict(sorted(stages.items())), _generator(root))

    @classmethod
    def find(cls, model_path: str | Path, levels: int = 3) -> RunDir | None:
        """Return the run a model file belongs to: the nearest of its ``levels`` parent folders that holds
        run.json (``RUN/stage_XX.pt``, ``RUN/exports/x.onnx``, ``RUN/exports/bench_HxW/x.tflite``), or None."""
        for folder in list(Path(model_path).resolve().parents)[:levels]:
            if (folder / RUN_JSON).is_file():
                try:
                    return cls.open(folder)
                except SRShrinkError:
                    return None
        return None

    # ---- the paths of the folder (every file name a run holds is written here and nowhere else)

    def stage_path(self, stage: int) -> Path:
        """Return the checkpoint path of ``stage`` (``RUN_DIR/stage_XX.pt``; it may not exist yet)."""
        return self.root / stage_file(stage)

    @property
    def state_path(self) -> Path:
        """Return RUN_DIR/state.pt, distill's resumable state."""
        return self.root / STATE

    @property
    def generator_path(self) -> Path:
        """Return RUN_DIR/generator.pt (it may not exist yet; ``generator`` is the one found when opened)."""
        return self.root / GENERATOR

    @property
    def run_path(self) -> Path:
        """Return RUN_DIR/run.json."""
        return self.root / RUN_JSON

    def holds_run(self) -> bool:
        """Return True when the folder holds a run (run.json or a stage file)."""
        return self.run_path.exists() or any(self.root.glob("stage_*.pt"))

    @contextlib.contextmanager
    def lock(self):
        """Hold RUN_DIR/.lock (an exclusive ``flock``) while a writer fills the folder; a second writer gets an
        SRShrinkError at once. The kernel drops the lock when the process ends, however it ends (SIGKILL too), so a
        killed run leaves no stale lock. Where ``fcntl`` is missing (Windows) nothing is locked."""
        try:
            import fcntl
        except ImportError:  # not a POSIX system: no advisory locks
            yield
            return
        path = self.root / LOCK
        f = open(path, "a+")
        try:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                pid = f.read().strip()
                raise SRShrinkError(f"{self.root}: another sr-shrink process{f' (pid {pid})' if pid else ''} is "
                                    "writing this run folder; wait for it to end or pass another --out.") from None
            f.seek(0)
            f.truncate()
            f.write(str(os.getpid()))
            f.flush()
            yield
        finally:
            f.close()

    def clear(self) -> None:
        """Delete the run's files (stages, run.json, state.pt, generator.pt, exports/) for a fresh run."""
        for p in [*self.root.glob("stage_*.pt"), self.run_path, self.state_path, self.generator_path]:
            p.unlink(missing_ok=True)
        shutil.rmtree(self.exports_dir, ignore_errors=True)
        self.run, self.stages, self.generator = {}, {}, None

    # ---- run.json

    @property
    def scale(self) -> int | None:
        """Return the run's upscaling factor from run.json, or None when it does not say."""
        value = self.run.get("scale")
        return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def require_run(self, *keys: str) -> dict:
        """Return run.json; an error naming what is missing when it is absent or lacks one of ``keys``."""
        if not self.run:
            raise SRShrinkError(f"{self.root}: no run.json here; pass a folder written by `sr-shrink distill`.")
        missing = [k for k in keys if not self.run.get(k)]
        if missing:
            raise SRShrinkError(f"{self.root / RUN_JSON}: has no {', '.join(missing)}; is the distill run "
                                "finished?")
        return self.run

    def stage_record(self, stage: int) -> dict:
        """Return run.json's record of ``stage`` (empty when run.json has none)."""
        for rec in self.run.get("stages", []) or []:
            if isinstance(rec, dict) and rec.get("stage") == stage:
                return rec
        return {}

    def missing_stages(self) -> list[int]:
        """Return the stages run.json records whose checkpoint file is not in the folder."""
        recorded = [r.get("stage") for r in self.run.get("stages", []) or [] if isinstance(r, dict)]
        return sorted(s for s in recorded if isinstance(s, int) and s not in self.stages)

    def write_run(self, run: dict) -> Path:
        """Write ``run`` as RUN_DIR/run.json atomically, keep it as ``self.run``; return the path."""
        self.run = run
        return atomic_write_json(run, self.run_path)

    def summary(self) -> dict:
        """Return the run-level facts export.json repeats: path, scale, mode, seed, teacher/bicubic PSNR."""
        return {"path": str(self.root), **{k: self.run[k] for k in SUMMARY_KEYS if k in self.run}}

    # ---- stages, teacher, generator

    def select(self, stage: int | str) -> list[int]:
        """Return the stage numbers ``stage`` ("all", "last" or a number) names; an error if one is missing."""
        have = sorted(self.stages)
        if isinstance(stage, str) and stage.strip().lower() in ("all", "last"):
            return have if stage.strip().lower() == "all" else have[-1:]
        try:
            n = int(stage)
        except (TypeError, ValueError):
            raise SRShrinkError(f"--stage {stage!r}: pass a stage number, 'all' or 'last'.") from None
        if n not in self.stages:
            raise SRShrinkError(f"{self.root}: no stage {n}; this run has stage(s) {', '.join(map(str, have))}.")
        return [n]

    def teacher_path(self) -> Path | None:
        """Return the teacher file run.json names: as given (absolute or relative to the current folder),
        else relative to the run folder; None when run.json names none or the file is not there."""
        teacher = self.run.get("teacher")
        raw = teacher.get("path") if isinstance(teacher, dict) else None
        if not raw or not isinstance(raw, str):
            return None
        for p in (Path(raw), self.root / raw):
            if p.is_file():
                return p
        return None

    def teacher_overrides(self) -> dict:
        """Return the ``load_teacher`` overrides the run was distilled with: ``value_range`` and, for an EDSR
        teacher, ``res_scale`` (None where run.json does not say), so the teacher reloads as it was used."""
        teacher = self.run.get("teacher") if isinstance(self.run.get("teacher"), dict) else {}
        config = teacher.get("config") if isinstance(teacher.get("config"), dict) else {}
        res_scale = config.get("res_scale") if teacher.get("arch") == "edsr" else None
        value_range = teacher.get("value_range")
        return {"value_range": value_range if isinstance(value_range, (int, float)) else None,
                "res_scale": res_scale if isinstance(res_scale, (int, float)) else None}

    # ---- exports and export.json

    @property
    def exports_dir(self) -> Path:
        """Return RUN_DIR/exports, the default export folder (it may not exist yet)."""
        return self.root / EXPORTS

    def read_index(self, out_dir: str | Path | None = None) -> dict:
        """Return the export.json of ``out_dir`` (default: exports_dir) with an ``exports`` list; a missing
        or damaged index reads as ``{"exports": []}`` (it is rebuilt by the next update)."""
        path = Path(out_dir or self.exports_dir) / INDEX_NAME
        try:
            data = _read_json_object(path, INDEX_NAME)
        except SRShrinkError:
            data = {}
        entries = data.get("exports")
        data["exports"] = [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []
        return data

    def index_paths(self, out_dir: str | Path | None = None) -> list[tuple[dict, Path]]:
        """Return (entry, absolute file path) for every entry of the export.json of ``out_dir``."""
        folder = Path(out_dir or self.exports_dir)
        return [(e, folder / e["file"]) for e in self.read_index(folder)["exports"] if isinstance(e.get("file"), str)]

    def update_index(self, entries: list[dict], out_dir: str | Path | None = None) -> Path:
        """Merge ``entries`` into the export.json of ``out_dir`` (default: exports_dir), replacing entries of
        the same ``file`` (``path`` keys are dropped: the index stays relocatable); return its path."""
        folder = Path(out_dir or self.exports_dir)
        by_file = {e["file"]: e for e in self.read_index(folder)["exports"] if "file" in e}
        for e in entries:
            by_file[e["file"]] = {k: v for k, v in e.items() if k != "path"}
        data = {"sr_shrink_exports": 1, "updated": now_iso(), "run": self.summary(),
                "exports": [by_file[k] for k in sorted(by_file)]}
        return atomic_write_json(data, folder / INDEX_NAME)


def _stage_from_ckpt(path: Path) -> int:
    from .models.student import load_student

    _, ckpt = load_student(path)
    return int(ckpt.get("stage", 1))


def _generator(root: Path) -> Path | None:
    p = root / GENERATOR
    return p if p.is_file() else None
