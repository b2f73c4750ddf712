"""Latencies measured on the phone, for ``sr-shrink bench --latency-from FILE`` and ``--adb BENCHMARK_MODEL``.

A host CPU is a poor stand-in for a phone (an x86 core without VNNI runs int8 slower than fp32, the opposite
of most phone CPUs and NPUs), so bench can rank its rows by latencies measured on the device instead:

- ``--latency-from FILE`` reads them from a file, one of:

  * the output of LiteRT's ``benchmark_model`` (one run or several concatenated; ``adb logcat`` lines with an
    ``I tflite :`` prefix and ``INFO:`` prefixes are fine): the model is the ``Graph: [...]`` line of each run,
    the latency the ``median=`` of its ``count=... avg=...`` line when the tool prints percentiles, else
    ``Inference (avg)`` of its ``Inference timings in us:`` line (microseconds, converted to ms);
  * a CSV of ``file,ms`` rows (a header row is optional; ``#`` starts a comment; a unit after the number, ``ms``,
    ``us``/``µs`` or ``s``, is converted to ms), e.g. the median prediction
    times read off an Xcode Core ML performance report. Xcode's report has no documented export format, so it
    is not parsed: copy its medians into such a CSV;
  * a JSON object ``{"file": ms, ...}``.

  A UTF-8 byte order mark (Excel's) is skipped. A model named twice keeps its last latency, and a
  ``benchmark_model`` run cut short (its model named, no timings) is left out; a note says so.

- ``--adb PATH`` runs ``benchmark_model`` on an attached Android device through ``adb`` (``$SR_SHRINK_ADB`` or
  the ``adb`` on PATH): a ``PATH`` that exists here is pushed to ``/data/local/tmp/sr_shrink/`` first, anything
  else is taken as the tool's path on the device; every .tflite row's file is pushed there and benchmarked
  (``--graph=... --num_threads=4`` plus ``--adb-args``), and its output parsed as above.

Rows are matched by file name (``stage_02_int8.tflite``); matched rows keep the host figures as
``host_latency_ms_median`` / ``host_latency_ms_p90`` and take the device's as ``latency_ms_median`` (``p90``
becomes None), with ``latency_source`` naming where it came from; rows without a device figure get
``latency_ms_median = None`` and so drop out of the pick and the Pareto front (a note says which).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import SRShrinkError, first_line

DEVICE_DIR = "/data/local/tmp/sr_shrink"
_NUM = r"([0-9.]+(?:[eE][+-]?[0-9]+)?)"
_GRAPH = re.compile(r"Graph:\s*\[([^\]]+)\]")
_TIMINGS = re.compile(r"Inference timings in us:.*?Inference \(avg\):\s*" + _NUM)
_COUNT = re.compile(r"count=(\d+)\b.*?\bavg=" + _NUM + r"(?:.*?\bmedian=" + _NUM + r")?")
_DELEGATED = re.compile(r"Replacing (\d+) out of (\d+) node\(s\) with delegate")


@dataclass
class DeviceLatency:
    """One model's latency on the device: ``ms`` (the median when the tool gave one, else the mean),
    ``statistic`` ("median"/"avg"/"given"), the ``runs`` behind it, and the delegated node share if logged."""

    file: str
    ms: float
    statistic: str
    source: str
    runs: int | None = None
    delegated_nodes: str | None = None


def parse_benchmark_model(text: str, source: str = "benchmark_model") -> list[DeviceLatency]:
    """Return one :class:`DeviceLatency` per ``benchmark_model`` run in ``text`` (see the module docstring);
    runs whose ``Graph:`` line is missing are named ``""``."""
    out: list[DeviceLatency] = []
    file, count, delegated = "", None, None
    for line in text.splitlines():
        if m := _GRAPH.search(line):
            file, count, delegated = Path(m.group(1).strip()).name, None, None
        elif m := _DELEGATED.search(line):
            delegated = f"{m.group(1)}/{m.group(2)}"
        elif m := _COUNT.search(line):
            count = (int(m.group(1)), float(m.group(2)), float(m.group(3)) if m.group(3) else None)
        elif m := _TIMINGS.search(line):
            avg = float(m.group(1))
            median = count[2] if count and count[2] is not None else None
            us, stat = (median, "median") if median is not None else (avg, "avg")
            out.append(DeviceLatency(file, round(us / 1000.0, 4), stat, source, count[0] if count else None,
                                     delegated))
    return out


_MS = re.compile(_NUM + r"\s*(ms|us|µs|μs|s)?", re.IGNORECASE)
_PER_MS = {"ms": 1.0, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "s": 1e3}


def _ms(value: str) -> float | None:
    """Return the milliseconds of a CSV latency (``3.2``, ``3.2 ms``, ``3200us``, ``0.0032 s``; ``nan`` and
    ``inf`` as such, for the caller to refuse), or None."""
    try:
        return float(value)
    except ValueError:
        pass
    m = _MS.fullmatch(value)
    if not m:
        return None
    try:
        return float(m.group(1)) * _PER_MS[(m.group(2) or "ms").lower()]
    except ValueError:  # "1.2.3"
        return None


def _parse_csv(text: str, source: str) -> list[DeviceLatency]:
    out, first = [], True
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = [p.strip() for p in line.split(",")]
        ms = _ms(parts[1]) if len(parts) == 2 else None
        # a header row: the first row, two columns, no number in the second (one with a number is a bad row)
        if ms is None and first and len(parts) == 2 and not re.search(r"\d", parts[1]):
            first = False
            continue
        first = False
        if ms is None:
            raise SRShrinkError(f"--latency-from {source}: line {n} {raw.strip()!r} is not 'file,ms' (e.g. "
                                "stage_02_int8.tflite,3.2).")
        out.append(DeviceLatency(Path(parts[0]).name, ms, "given", source))
    return out


def _unfinished(text: str) -> list[str]:
    """Return the model of each ``benchmark_model`` run in ``text`` that has no ``Inference timings`` line before
    the next run's ``Graph:`` line or the end (the output was cut short, or the run failed)."""
    marks = list(_GRAPH.finditer(text))
    ends = [m.start() for m in marks[1:]] + [len(text)]
    return [Path(m.group(1).strip()).name for m, end in zip(marks, ends)
            if "Inference timings in us" not in text[m.end():end]]


def read_latency_file(path: str | Path, note: Callable[[str], None] | None = None) -> list[DeviceLatency]:
    """Return the device latencies in ``path`` (benchmark_model output, a ``file,ms`` CSV or a JSON object; see
    the module docstring), passing ``note`` one line for each model named twice and for each benchmark_model
    run cut short."""
    path = Path(path)
    note = note or (lambda _m: None)
    if not path.is_file():
        raise SRShrinkError(f"--latency-from {path}: no such file.")
    text = path.read_bytes().decode("utf-8-sig", errors="replace")  # utf-8-sig: without Excel's byte order mark
    if "Inference timings in us" in text or _GRAPH.search(text):
        found = parse_benchmark_model(text, f"benchmark_model output {path.name}")
        if any(not d.file for d in found):
            raise SRShrinkError(f"--latency-from {path}: a benchmark_model run has no 'Graph: [...]' line naming "
                                "its model; keep the tool's full output.")
        if not found:
            raise SRShrinkError(f"--latency-from {path}: benchmark_model output with no finished run (no "
                                "'Inference timings in us' line); it was cut short: rerun the tool and keep its "
                                "full output.")
        for file in _unfinished(text):
            note(f"--latency-from {path.name}: the benchmark_model run of {file} has no 'Inference timings' (cut "
                 "short or failed); it is left out")
    elif text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
            found = [DeviceLatency(Path(k).name, float(v), "given", path.name) for k, v in data.items()]
        except (ValueError, TypeError, AttributeError) as exc:
            raise SRShrinkError(f"--latency-from {path}: not a JSON object of file: ms ({first_line(exc)}).") from None
    else:
        found = _parse_csv(text, path.name)
    if not found:
        raise SRShrinkError(f"--latency-from {path}: no latencies found; expected benchmark_model output or "
                            "'file,ms' rows.")
    bad = [d for d in found if not (math.isfinite(d.ms) and d.ms > 0)]
    if bad:
        raise SRShrinkError(f"--latency-from {path}: latency of {bad[0].file} is {bad[0].ms}; must be > 0 ms (a "
                            "finite number).")
    twice: dict[str, list[float]] = {}
    for d in found:
        twice.setdefault(d.file, []).append(d.ms)
    for file, values in twice.items():
        if len(values) > 1:
            note(f"--latency-from {path.name} names {file} {len(values)} times ({', '.join(f'{v:g}' for v in values)} "
                 "ms); the last is used")
    return found


def adb_exe() -> str:
    """Return the adb to run (``SR_SHRINK_ADB``, else ``adb`` on PATH), or raise a one-line SRShrinkError."""
    exe = os.environ.get("SR_SHRINK_ADB") or shutil.which("adb")
    if not exe:
        raise SRShrinkError("--adb needs Android's adb on PATH (or SR_SHRINK_ADB=/path/to/adb) and a device "
                            "attached with USB debugging on.")
    return exe


def _adb(exe: str, *args: str, timeout: float = 600) -> str:
    try:
        res = subprocess.run([exe, *args], capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SRShrinkError(f"adb {' '.join(args[:2])} failed: {first_line(exc)}") from None
    if res.returncode != 0:
        msg = (res.stderr or res.stdout).strip().splitlines()
        raise SRShrinkError(f"adb {' '.join(args[:2])} failed (exit {res.returncode}): "
                            f"{msg[-1] if msg else 'no output'}")
    return res.stdout + res.stderr


def run_on_device(tool: str, files: list[Path], extra_args: str = "") -> list[DeviceLatency]:
    """Return the latency of each .tflite in ``files`` measured by ``benchmark_model`` (``tool``: a file here,
    pushed first, or the tool's path on the device) on the device ``adb`` reaches."""
    exe = adb_exe()
    _adb(exe, "shell", "mkdir", "-p", DEVICE_DIR, timeout=60)
    remote_tool = tool
    if Path(tool).is_file():
        remote_tool = f"{DEVICE_DIR}/benchmark_model"
        _adb(exe, "push", str(tool), remote_tool)
        _adb(exe, "shell", "chmod", "755", remote_tool, timeout=60)
    out = []
    for f in files:
        remote = f"{DEVICE_DIR}/{f.name}"
        _adb(exe, "push", str(f), remote)
        text = _adb(exe, "shell", remote_tool, f"--graph={remote}", "--num_threads=4", *shlex.split(extra_args))
        runs = [d for d in parse_benchmark_model(text, f"adb benchmark_model {remote_tool}") if d.file == f.name]
        if not runs:
            raise SRShrinkError(f"benchmark_model on the device printed no 'Inference timings' for {f.name}: "
                                f"{text.strip().splitlines()[-1] if text.strip() else 'no output'}")
        out.append(runs[-1])
    return out


def apply_device_latency(rows: list[dict], latencies: list[DeviceLatency]) -> list[str]:
    """Give each row whose file has a device latency that latency (see the module docstring), in place; set
    the others' ``latency_ms_median`` to None. Return notes on what was matched and what was not."""
    by_name = {d.file: d for d in latencies}
    matched, unmatched_rows = [], []
    for r in rows:
        name = Path(str(r.get("path") or "")).name
        r["host_latency_ms_median"], r["host_latency_ms_p90"] = r.get("latency_ms_median"), r.get("latency_ms_p90")
        d = by_name.get(name) if r.get("runtime") != "torch" else None
        if d is None:
            r["latency_ms_median"], r["latency_ms_p90"], r["latency_source"] = None, None, None
            unmatched_rows.append(f"stage {r.get('stage')} {r.get('runtime')} {r.get('precision')}")
            continue
        r["latency_ms_median"], r["latency_ms_p90"] = d.ms, None
        r["latency_source"] = f"device ({d.source}, {d.statistic})"
        r["device_latency"] = asdict(d)
        matched.append(name)
    if not matched:
        names = ", ".join(sorted(by_name)[:4])
        raise SRShrinkError(f"none of the device latencies ({names}) names a benchmarked file; name the files as "
                            "bench's rows do (e.g. stage_02_int8.tflite).")
    notes = [f"latencies of {len(matched)} row(s) measured on the device; the pick ranks those only"]
    if unmatched_rows:
        notes.append(f"no device latency for {len(unmatched_rows)} row(s) ({', '.join(unmatched_rows[:6])}"
                     f"{', ...' if len(unmatched_rows) > 6 else ''}): left out of the pick")
    unused = sorted(set(by_name) - set(matched))
    if unused:
        notes.append(f"device latencies for files bench did not measure: {', '.join(unused[:6])}")
    return notes
