"""run.json as typed records: :class:`RunRecord` (the run) and :class:`StageRecord` (one per finished stage).

``from_dict`` reads any run.json, old ones included: a key it lacks is None; a key it does not know, or one whose
value has an unexpected type, is kept as it was in ``extra``. ``to_dict`` writes the keys in the order they were
first set (as a dict keeps them), so distill's run.json reads as it always did and a record read and written back
is the same file. A field that was never set (None) is not written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields

_NUMBER = (int, float)


def _fits(value, kind) -> bool:
    """Return True when ``value`` has the type ``kind`` names ("int", "float", "str", "bool", "dict", "list")."""
    if kind in ("int", "float") and isinstance(value, bool):
        return False
    return isinstance(value, {"int": int, "float": _NUMBER, "str": str, "bool": bool, "dict": dict,
                              "list": list}[kind])


class _Ordered:
    """The shared part of the records: remembers the order fields are first set to a value, and reads/writes dicts."""


    def __setattr__(self, name, value):
        order = self.__dict__.setdefault("_order", [])
        if value is not None and name != "extra" and name not in order:
            order.append(name)
        object.__setattr__(self, name, value)

    @classmethod
    def _kinds(cls) -> dict[str, str]:
        """Return field name -> the JSON type it holds, read off the annotation (``int | None`` -> "int")."""
        return {f.name: re.match(r"\w+", str(f.type)).group() for f in fields(cls) if f.name != "extra"}

    @classmethod
    def _names(cls) -> list[str]:
        return [f.name for f in fields(cls) if f.name != "extra"]

    @classmethod
    def _read(cls, data: dict, convert: dict | None = None):
        """Return a record of ``data`` (see the module docstring); ``convert`` maps a field to how its value is
        read (e.g. the stage records)."""
        rec = cls()
        names, kinds = set(cls._names()), cls._kinds()
        for key, value in data.items():
            if key in names and value is not None and _fits(value, kinds[key]):
                setattr(rec, key, (convert or {}).get(key, lambda v: v)(value))
            else:
                rec.extra[key] = value
                rec._order.append(key)
        return rec

    def to_dict(self) -> dict:
        """Return the JSON-ready dict, keys in the order they were first set."""
        out, names = {}, set(self._names())
        for key in self.__dict__.get("_order", []):
            value = getattr(self, key) if key in names else None
            if value is not None:
                out[key] = [s.to_dict() for s in value] if key == "stages" else value
            elif key in self.extra:
                out[key] = self.extra[key]
        return out

    def get(self, key: str, default=None):
        """Return the value of ``key`` (a field, else an extra key), or ``default`` when it is not set."""
        value = getattr(self, key) if key in self._names() else None
        value = self.extra.get(key) if value is None else value
        return default if value is None else value


@dataclass(eq=False)
class StageRecord(_Ordered):
    """run.json's record of one finished stage: its number, size, checkpoint file, steps, KD losses and seconds;
    ``train_params`` when it trained in another form (rep blocks); the eval scores when there were eval images."""


    stage: int | None = None
    n_blocks: int | None = None
    channels: int | None = None
    params: int | None = None
    checkpoint: str | None = None
    steps: int | None = None
    first_kd_loss: float | None = None
    final_kd_loss: float | None = None
    seconds: float | None = None
    train_params: int | None = None
    val_psnr_y: float | None = None
    val_ssim_y: float | None = None
    fidelity_psnr_y: float | None = None
    fidelity_ssim_y: float | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> StageRecord:
        """Return the record of a stage entry of run.json (any keys; see the module docstring)."""
        return cls._read(data)


@dataclass(eq=False)
class RunRecord(_Ordered):
    """run.json: the run's ``scale``, its ``teacher`` (path, sha256 and what the loader found), ``mode``,
    ``seed``, ``recipe`` and ``config``, ``world_size``, ``teacher_dtype``, the finished ``stages``, whether it is
    ``complete``, where it was ``resumed_from``, the teacher's and bicubic's eval scores, the ``pool`` and
    ``time_budget`` records, the ``timing_seconds`` of its parts, ``teacher_kind``, the measurement that resolved
    ``--synthetic auto`` (:mod:`sr_shrink.distill.perceptual`), and ``eval_dir``, the ``--eval`` folder (or "none")
    when it was not the bundled split."""


    scale: int | None = None
    teacher: dict | None = None
    mode: str | None = None
    seed: int | None = None
    recipe: dict | None = None
    config: dict | None = None
    world_size: int | None = None
    teacher_dtype: str | None = None
    eval_dir: str | None = None
    stages: list[StageRecord] | None = None
    complete: bool | None = None
    value_range_guessed: bool | None = None
    time_budget: dict | None = None
    resumed_from: list | None = None
    teacher_psnr_y: float | None = None
    teacher_ssim_y: float | None = None
    bicubic_psnr_y: float | None = None
    bicubic_ssim_y: float | None = None
    pool: dict | None = None
    timing_seconds: dict | None = None
    teacher_kind: dict | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict) -> RunRecord:
        """Return the record of a run.json object (any keys; see the module docstring); stage entries that are
        not objects are dropped."""
        return cls._read(data, {"stages": lambda v: [StageRecord.from_dict(s) for s in v if isinstance(s, dict)]})

    def stage(self, number: int) -> StageRecord | None:
        """Return the record of stage ``number``, or None."""
        return next((s for s in self.stages or [] if s.stage == number), None)

    def teacher_overrides(self) -> dict:
        """Return the ``load_teacher`` overrides the run was distilled with: ``value_range`` and, for an EDSR
        teacher, ``res_scale`` (None where run.json does not say), so the teacher reloads as it was used."""
        teacher = self.teacher or {}
        config = teacher.get("config") if isinstance(teacher.get("config"), dict) else {}
        res_scale = config.get("res_scale") if teacher.get("arch") == "edsr" else None
        value_range = teacher.get("value_range")
        return {"value_range": value_range if isinstance(value_range, _NUMBER) else None,
                "res_scale": res_scale if isinstance(res_scale, _NUMBER) else None}
