"""The teacher of a distill run, as :class:`~sr_shrink.run.RunDir` finds and loads it (:class:`TeacherOfRun`).

run.json names the teacher file (as given, and ``abs_path`` where it was when the run began; a relative one is
also looked for in the run folder), its sha256 and the overrides it was loaded with; export (``--qat``), bench and
``upscale --compare`` reload it through :meth:`TeacherOfRun.load_teacher`, once per RunDir.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import SRShrinkError


@dataclass
class RunTeacher:
    """A run's teacher as :meth:`RunDir.load_teacher` loaded it: the network ``net``, its file ``path`` and where
    that came from (``source``: "run.json" or "--teacher")."""

    net: object
    path: Path
    source: str


class TeacherOfRun:
    """The teacher part of :class:`~sr_shrink.run.RunDir` (which gives ``root``, ``record``, ``run_path``,
    ``scale`` and the ``_teachers`` cache)."""

    def teacher_path(self) -> Path | None:
        """Return the teacher file run.json names: as given (absolute or relative to the current folder), else
        where it was when the run began (``abs_path``: a relative path given from another folder), else relative
        to the run folder; None when run.json names none or the file is not there."""
        teacher = self.run.get("teacher")
        raw = teacher.get("path") if isinstance(teacher, dict) else None
        if not raw or not isinstance(raw, str):
            return None
        resolved = teacher.get("abs_path")
        for p in (Path(raw), *([Path(resolved)] if isinstance(resolved, str) and resolved else []), self.root / raw):
            if p.is_file():
                return p
        return None

    def teacher_overrides(self) -> dict:
        """Return the ``load_teacher`` overrides the run was distilled with (:meth:`RunRecord.teacher_overrides`)."""
        return self.record.teacher_overrides()

    def teacher_missing(self) -> str:
        """Return what run.json says of a teacher file that is not at hand: "names teacher 'X', which is not there"
        or "names no teacher file"."""
        raw = (self.record.teacher or {}).get("path")
        return f"names teacher {raw!r}, which is not there" if raw else "names no teacher file"

    def same_teacher(self) -> bool | None:
        """Return whether the teacher file run.json names (:meth:`teacher_path`) has the sha256 run.json records;
        None when there is no such file or no recorded hash (computed once per RunDir)."""
        from .teachers import sha256_file

        path, want = self.teacher_path(), (self.record.teacher or {}).get("sha256")
        if path is None or not want:
            return None
        key = ("sha256", str(path.resolve()))
        if key not in self._teachers:
            self._teachers[key] = sha256_file(path) == want
        return self._teachers[key]

    def load_teacher(self, scale: int | None = None, device: str = "cpu", trust_pickle: bool = False,
                     path: str | Path | None = None, value_range: float | None = None,
                     res_scale: float | None = None) -> RunTeacher:
        """Return the run's teacher (:class:`RunTeacher`), loaded once per RunDir and arguments.

        ``path`` (an override such as --teacher) is loaded as given, with ``value_range`` / ``res_scale``; else
        the file run.json names (:meth:`teacher_path`), reloaded with the overrides run.json records where
        ``value_range`` / ``res_scale`` are None (:meth:`same_teacher` says whether it is the file distilled
        from). ``scale`` defaults to the run's. An SRShrinkError when run.json names no teacher file or it is not
        there (callers that can do without check :meth:`teacher_path` first), and load_teacher's errors."""
        from .teachers import load_teacher

        source = "--teacher" if path is not None else "run.json"
        if path is None:
            path = self.teacher_path()
            if path is None:
                raise SRShrinkError(f"{self.run_path} {self.teacher_missing()}; put the file back or pass --teacher "
                                    "PATH.")
            saved = self.teacher_overrides()
            value_range = value_range if value_range is not None else saved["value_range"]
            res_scale = res_scale if res_scale is not None else saved["res_scale"]
        scale = scale if scale is not None else self.scale
        key = (str(Path(path).resolve()), source, scale, str(device), trust_pickle, value_range, res_scale)
        if key not in self._teachers:
            net = load_teacher(path, scale=scale, trust_pickle=trust_pickle, value_range=value_range,
                               device=device, res_scale=res_scale)
            self._teachers[key] = RunTeacher(net, Path(path), source)
        return self._teachers[key]

