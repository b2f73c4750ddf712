"""A distill run folder, read (and written) in one place: :class:`RunDir`.

What ``sr-shrink distill --out RUN_DIR`` leaves there, and the rules every command reads it by:

- ``stage_XX.pt``: one student per finished stage; the stages of a run are the files of that name present;
- ``run.json``: the run's record (scale, teacher, mode, ``stages`` records, teacher/bicubic PSNR), typed as
  :class:`~sr_shrink.record.RunRecord` (``RunDir.record``); optional for export (``{}`` when absent), required by
  bench; unreadable JSON is an error, never guessed around;
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
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import SRShrinkError
from .io import atomic_write_json, exclusive_lock, read_json_object
from .record import RunRecord
from .run_teacher import TeacherOfRun

if TYPE_CHECKING:
    from .models.student import SRStudent

STAGE_RE = re.compile(r"^stage_(\d{2,})\.pt$")
RUN_JSON = "run.json"
GENERATOR = "generator.pt"
STATE = "state.pt"
LOCK = ".lock"
EXPORTS = "exports"
BENCH_JSON, BENCH_PLOT = "bench.json", "bench.png"  # what `sr-shrink bench RUN` writes into the run by default
INDEX_NAME = "export.json"
SUMMARY_KEYS = ("scale", "mode", "seed", "teacher_psnr_y", "bicubic_psnr_y")


def now_iso() -> str:
    """Return the current UTC time as an ISO 8601 string (seconds)."""
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()


def _indexed_run(model_path: Path) -> Path | None:
    """Return the run folder that the export.json beside ``model_path`` records for it (the index lists the
    file, and the recorded run still holds run.json), or None."""
    try:
        index = read_json_object(model_path.parent / INDEX_NAME, INDEX_NAME)
    except SRShrinkError:
        return None
    entries = index.get("exports")
    listed = isinstance(entries, list) and any(isinstance(e, dict) and e.get("file") == model_path.name
                                               for e in entries)
    run = index.get("run")
    recorded = run.get("path") if isinstance(run, dict) else None
    if not listed or not isinstance(recorded, str) or not recorded:
        return None
    folder = Path(recorded)
    return folder if (folder / RUN_JSON).is_file() else None


def stage_file(stage: int) -> str:
    """Return the checkpoint name of ``stage``: ``stage_XX.pt``."""
    return f"stage_{stage:02d}.pt"


@dataclass
class RunDir(TeacherOfRun):
    """A distill run folder (or a lone stage file): ``root``, its ``run`` (run.json, {} if absent; typed:
    :attr:`record`), ``stages`` {stage number: checkpoint path} and ``generator`` (generator.pt or None)."""

    root: Path
    run: dict
    stages: dict[int, Path]
    generator: Path | None = None
    _teachers: dict = field(default_factory=dict, repr=False, compare=False)
    from_file: bool = False  # opened from one stage_XX.pt: ``stages`` holds that stage alone

    @classmethod
    def open(cls, path: str | Path | RunDir) -> RunDir:
        """Return the RunDir of a run folder or of a single ``stage_XX.pt``; an error if it is neither."""
        if isinstance(path, RunDir):
            return path
        path = Path(path)
        _refuse_model_or_image(path)
        if path.is_file():
            m = STAGE_RE.match(path.name)
            stage = int(m.group(1)) if m else _stage_from_ckpt(path)
            return cls(path.parent, read_json_object(path.parent / RUN_JSON, RUN_JSON), {stage: path},
                       _generator(path.parent), from_file=True)
        if not path.is_dir():
            raise SRShrinkError(f"{path}: no such run directory or stage_XX.pt file.")
        stages = {int(m.group(1)): p for p in path.iterdir() if (m := STAGE_RE.match(p.name)) and p.is_file()}
        if not stages:
            raise SRShrinkError(f"{path}: not a distill run (no stage_XX.pt files); pass the folder "
                                "'sr-shrink distill' wrote, or one stage_XX.pt.")
        return cls(path, read_json_object(path / RUN_JSON, RUN_JSON), dict(sorted(stages.items())),
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
        return cls(root, read_json_object(root / RUN_JSON, RUN_JSON), dict(sorted(stages.items())), _generator(root))

    @classmethod
    def find(cls, model_path: str | Path, levels: int = 3) -> RunDir | None:
        """Return the run a model file belongs to: the nearest of its ``levels`` parent folders that holds
        run.json (``RUN/stage_XX.pt``, ``RUN/exports/x.onnx``, ``RUN/exports/bench_HxW/x.tflite``), else the run
        that the export.json beside the file names for it (a file exported with ``--out`` elsewhere), or None."""
        for folder in list(Path(model_path).resolve().parents)[:levels]:
            if (folder / RUN_JSON).is_file():
                try:
                    return cls.open(folder)
                except SRShrinkError:
                    return None
        recorded = _indexed_run(Path(model_path))
        if recorded is None:
            return None
        try:
            return cls.open(recorded)
        except SRShrinkError:
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
        """Hold RUN_DIR/.lock (:func:`~sr_shrink.io.exclusive_lock`) while a writer fills the folder; a second
        writer gets an SRShrinkError at once. A killed run (SIGKILL too) leaves no stale lock."""
        with exclusive_lock(self.root / LOCK) as holder:
            if holder is not None:
                raise SRShrinkError(f"{self.root}: another sr-shrink process{f' (pid {holder})' if holder else ''} "
                                    "is writing this run folder; wait for it to end or pass another --out.")
            yield

    def clear(self) -> None:
        """Delete the run's files (stages, run.json, state.pt, generator.pt, exports/, and the bench.json and
        bench.png a bench of the old run wrote) for a fresh run."""
        for p in [*self.root.glob("stage_*.pt"), self.run_path, self.state_path, self.generator_path,
                  self.root / BENCH_JSON, self.root / BENCH_PLOT]:
            p.unlink(missing_ok=True)
        shutil.rmtree(self.exports_dir, ignore_errors=True)
        self.run, self.stages, self.generator = {}, {}, None
        self._teachers.clear()

    # ---- run.json

    @property
    def record(self) -> RunRecord:
        """Return run.json as a :class:`~sr_shrink.record.RunRecord` (every field None when there is none)."""
        return RunRecord.from_dict(self.run)

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
        """Return run.json's record of ``stage`` as a dict (empty when run.json has none)."""
        rec = self.record.stage(stage)
        return rec.to_dict() if rec is not None else {}

    def missing_stages(self) -> list[int]:
        """Return the stages run.json records whose checkpoint file is not in the folder."""
        return sorted(r.stage for r in self.record.stages or [] if r.stage is not None and r.stage not in self.stages)

    def write_run(self, run: RunRecord | dict) -> Path:
        """Write ``run`` (a record or its dict) as RUN_DIR/run.json atomically, keep its dict as ``self.run``;
        return the path."""
        self.run = run.to_dict() if isinstance(run, RunRecord) else run
        return atomic_write_json(self.run, self.run_path)

    def summary(self) -> dict:
        """Return the run-level facts export.json repeats: path, scale, mode, seed, teacher/bicubic PSNR."""
        return {"path": str(self.root), **{k: self.run[k] for k in SUMMARY_KEYS if k in self.run}}

    # ---- stages (the teacher: :class:`~sr_shrink.run_teacher.TeacherOfRun`)

    def select(self, stage: int | str) -> list[int]:
        """Return the stage numbers ``stage`` ("all", "last" or a number) names; an error if one is missing."""
        have = sorted(self.stages)
        if isinstance(stage, str) and stage.strip().lower() in ("all", "last"):
            return have if stage.strip().lower() == "all" else have[-1:]
        try:
            n = int(stage)
        except (TypeError, ValueError):
            raise SRShrinkError(f"--stage {stage!r}: pass a stage number, 'all' or 'last'.") from None
        if n not in self.stages and self.from_file:
            (only, path), = self.stages.items()
            raise SRShrinkError(f"--stage {n}: {path} holds stage {only} alone; drop --stage, or pass the run folder "
                                f"{self.root} to pick among its stages.")
        if n not in self.stages:
            raise SRShrinkError(f"{self.root}: no stage {n}; this run has stage(s) {', '.join(map(str, have))}.")
        return [n]

    def check_stages(self, stages: list[int]) -> None:
        """Return None when the checkpoint of every stage in ``stages`` loads; else raise the SRShrinkError of
        :func:`load_stage` for the first that does not (naming the file and the ``distill --resume`` that trains
        it again), so a command fails before it writes anything."""
        for stage in stages:
            load_stage(self.stages[stage])

    # ---- exports and export.json

    @property
    def exports_dir(self) -> Path:
        """Return RUN_DIR/exports, the default export folder (it may not exist yet)."""
        return self.root / EXPORTS

    def bench_pick(self, recommended: dict | None = None) -> Path | None:
        """Return the file bench recommended for this run (``recommended``, bench.json's pick, read from the run when
        not given), found in :attr:`exports_dir`, or None (no bench.json, no pick, a damaged one, the file gone).
        bench.json records the path as bench was given the run, which need not lead there from another folder."""
        if recommended is None:
            try:
                recommended = read_json_object(self.root / BENCH_JSON, BENCH_JSON).get("recommended")
            except SRShrinkError:
                return None
        name = Path(str((recommended or {}).get("path") or "")).name
        return self.exports_dir / name if name and (self.exports_dir / name).exists() else None

    def read_index(self, out_dir: str | Path | None = None) -> dict:
        """Return the export.json of ``out_dir`` (default: exports_dir) with an ``exports`` list; a missing
        or damaged index reads as ``{"exports": []}`` (it is rebuilt by the next update)."""
        path = Path(out_dir or self.exports_dir) / INDEX_NAME
        try:
            data = read_json_object(path, INDEX_NAME)
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


def load_stage(path: str | Path) -> tuple[SRStudent, dict]:
    """Return (student, checkpoint dict) of the stage file ``path``, as
    :func:`~sr_shrink.models.student.load_student`. A file there that cannot be read (truncated, overwritten,
    foreign) in a run folder (run.json beside it) is an SRShrinkError that names it and says to rerun
    ``sr-shrink distill ... --resume``, which trains that stage and the stages grown from it again."""
    from .models.student import UnreadableStudent, load_student

    path = Path(path)
    try:
        return load_student(path)
    except UnreadableStudent as exc:
        if not (path.is_file() and (path.parent / RUN_JSON).is_file()):
            raise
        m = STAGE_RE.match(path.name)
        what = f"stage {int(m.group(1))} and the stages after it" if m else "it"
        raise SRShrinkError(f"{path}: {exc.reason}; rerun `sr-shrink distill ... --out {path.parent} --resume` "
                            f"with the run's teacher and options to train {what} again.") from None


def _refuse_model_or_image(path: Path) -> None:
    """Raise a one-line SRShrinkError when ``path``, given where a run belongs, is an exported model or an image."""
    from .teachers.formats import exported_kind, image_kind

    kind = exported_kind(path)
    if kind is not None:
        raise SRShrinkError(f"{path}: this is an exported {kind} model, not a run folder or stage_XX.pt; pass the "
                            f"folder 'sr-shrink distill' wrote ('sr-shrink upscale {path} IMAGE' runs the model).")
    kind = image_kind(path) if path.is_file() else None
    if kind is not None:
        raise SRShrinkError(f"{path}: this is a {kind} image, not a run folder or stage_XX.pt; pass the folder "
                            "'sr-shrink distill' wrote (images go to 'sr-shrink upscale MODEL IMAGE').")


def _stage_from_ckpt(path: Path) -> int:
    _, ckpt = load_stage(path)
    return int(ckpt.get("stage", 1))


def _generator(root: Path) -> Path | None:
    p = root / GENERATOR
    return p if p.is_file() else None
