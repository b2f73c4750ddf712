"""The export pipeline: ``export_run`` and the steps every format shares.

``export_run(run, target, stage, precision, out, **opts)`` exports stage(s) of a distill run (or one
``stage_XX.pt``) to ``OUT/stage_XX_<tag>.<onnx|mlpackage|tflite>`` (default OUT: ``RUN_DIR/exports``) and
merges one entry per file into ``OUT/export.json`` as each file is done. A file is written and verified as
``OUT/.partial-<pid>-<name>`` and takes its name only then, so an export stopped at any point leaves the files it
finished (indexed), no partial one, and an older file of the same name as it was (a process killed outright
leaves its partial file until the next export into OUT removes it). Every export goes through
the same steps, one export function per format (``export_onnx``, ``export_coreml``, ``export_tflite``):

1. wrap the student in :class:`~sr_shrink.export.wrapper.MobileSR` (conv anchor, rank-4 pixel shuffle);
2. convert (int8: calibrated on generator samples or photos, see :mod:`~sr_shrink.export.calib`);
3. read the written graph back: every tensor rank <= 4 and every op on the target's allow-list, or an error;
4. open the file with its runner from :mod:`sr_shrink.runtimes` (onnxruntime, LiteRT, or the numpy MIL
   evaluator for Core ML), the same runner bench and upscale use, and verify it on the eval images against
   the PyTorch student (:mod:`~sr_shrink.export.verify`): verified when the Y-PSNR is within the precision's
   tolerance of the student's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .. import __version__
from ..data import load_eval_set
from ..errors import SRShrinkError, first_line
from ..mil_eval import UnsupportedOp
from ..models.student import SRStudent
from ..progress import task
from ..run import RunDir, load_stage, now_iso
from ..runtimes import open_runner, runtime_label
from .biascorr import correct_bias
from .calib import CalibSource, calib_inputs, calib_source, without_unreadable_generator
from .equalize import equalize
from .gptq import gptq_round
from .graph import GraphInfo, check_graph
from .onnx import CALIB_PERCENTILE
from .options import ExportConfig, given_options, unused_options_note
from .qat import DEFAULT_LR, STUDENT_LR, DataFreeInputs, QATConfig, finetune, run_teacher
from .targets import Target, get_target
from .verify import images_at, not_verified, tolerance_key, verify
from .wrapper import build_wrapper


def export_run(run_dir: str | Path | RunDir, target: str, stage: int | str = "all", precision: str | None = None,
               out: str | Path | None = None, log: Callable[[str], None] | None = None, **opts) -> list[dict]:
    """Export ``stage`` ("all", "last" or a number) of the run ``run_dir`` (a folder, a stage_XX.pt or an
    open :class:`~sr_shrink.run.RunDir`) to ``target``.

    ``precision`` is fp32, fp16 or int8 (default: fp16 for Core ML, fp32 otherwise); ``opts`` are the other
    :class:`ExportConfig` fields (input_size, layout, palettize, calib, calib_samples, seed, eval_dir,
    eval_images, native_io, shuffle, verify, qat_steps, qat_lr, teacher, trust_pickle). Returns the export.json
    entries written, one per file, each with an extra absolute ``path``. Raises :class:`SRShrinkError` with a
    one-line message on bad input. ``log`` gets one-line notes (a generator.pt that cannot be read, and what the
    export uses instead).
    """
    cfg = _config(target, precision, opts)
    run = RunDir.open(run_dir)
    stages = run.select(stage)
    run.check_stages(stages)  # an unreadable stage file fails before the first file is written
    fmt = get_target(cfg.target)
    fmt.require(cfg.precision)
    calibrated = cfg.uses_calib  # Core ML int8 takes calibration inputs only for --gptq / --bias-correction
    if cfg.qat_steps and cfg.verify:  # and the file a QAT export is compared with may take them (Core ML's GPTQ)
        calibrated = calibrated or cfg.without_qat().uses_calib
    run, note = without_unreadable_generator(run, cfg.calib, calibrated, bool(cfg.qat_steps))
    for line in (unused_options_note(opts, cfg), note):
        if line and log is not None:
            log(line)
    job = _Job(run, cfg, fmt, given_options(opts, cfg))
    if calibrated:  # a bad --calib fails before the first file is written
        job.calib_src = calib_source(run, cfg.calib)
    scale = run.scale or load_stage(run.stages[stages[0]])[0].scale  # check_stages read it already: not again
    if cfg.qat_steps and cfg.qat_target == "teacher":  # a missing or unloadable teacher fails before any write
        job.teacher(scale)
    if cfg.verify:  # so does a bad --eval folder (missing, no images, images too small)
        job.pairs(scale)
    out_dir = Path(out) if out is not None else run.exports_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for s in stages:  # each file is indexed as it is done: an export stopped at a later stage keeps it
        try:
            entries.append(_export_stage(job, s, out_dir))
        except KeyboardInterrupt:
            if entries and log is not None:
                log(kept_note(entries, out_dir))
            raise
        run.update_index(entries[-1:], out_dir)
    return entries


def kept_note(entries: list[dict], out_dir: Path) -> str:
    """Return the line an export stopped midway says about the files it finished (``entries``): kept in
    ``out_dir`` and indexed, the file it was writing dropped, and that running it again writes every stage anew."""
    files = ", ".join(e["file"] for e in entries)
    return (f"{files} finished and kept in {out_dir} (listed in export.json); the file being written was dropped. "
            "Run the same command again to export every stage (the finished ones are written anew).")


def _config(target: str, precision: str | None, opts: dict) -> ExportConfig:
    try:
        return ExportConfig(target=target, precision=precision, **opts)
    except TypeError as exc:
        raise SRShrinkError(f"export option error: {first_line(exc)}") from None


@dataclass
class _Job:
    """One export_run call: the run, the options, the target's record, and inputs shared by its stages."""

    run: RunDir
    cfg: ExportConfig
    fmt: Target
    options: dict = field(default_factory=dict)  # the file-shaping options the call gave (export.json "options")
    calib_src: CalibSource | None = None  # where calibration inputs come from (export_run sets it when calibrated)
    _pairs: dict = field(default_factory=dict)
    _calib: dict = field(default_factory=dict)
    _teacher: dict = field(default_factory=dict)

    def pairs(self, scale: int) -> list:
        """Return the verification pairs for ``scale`` (loaded once)."""
        if scale not in self._pairs:
            self._pairs[scale] = load_eval_set(scale, self.cfg.eval_dir, self.cfg.eval_images)
        return self._pairs[scale]

    def calib(self, scale: int) -> tuple[list[torch.Tensor], dict]:
        """Return (calibration inputs, their export.json record) for ``scale`` (made once)."""
        if scale not in self._calib:
            src = self.calib_src
            inputs = calib_inputs(src, scale, self.cfg.calib_samples, self.cfg.input_size, self.cfg.seed)
            rec = {**src.describe(), "samples": len(inputs), "seed": self.cfg.seed,
                   "input_shape": list(inputs[0].shape[1:])}
            self._calib[scale] = (inputs, rec)
        return self._calib[scale]

    def teacher(self, scale: int) -> tuple[torch.nn.Module, dict]:
        """Return (the teacher --qat fine-tunes against, its record) for ``scale`` (loaded once)."""
        if scale not in self._teacher:
            self._teacher[scale] = run_teacher(self.run, scale, self.cfg.teacher, self.cfg.trust_pickle)
        return self._teacher[scale]

    def finetune(self, student: SRStudent) -> tuple[SRStudent, dict]:
        """Return (the QAT fine-tuned copy of ``student``, its ``qat`` record) for this export's settings: the
        target's weight range and float parts, against the original student (ranges frozen at the file's own
        calibration rule on this export's calibration inputs) or the teacher (EMA ranges)."""
        cfg = self.cfg
        scheme = self.fmt.scheme_for(cfg)  # mirror what the exporter quantizes
        activations = self.fmt.calibrated(cfg.precision)  # Core ML int8: float activations
        percentile = scheme.percentile if scheme is not None and scheme.percentile else CALIB_PERCENTILE
        if cfg.qat_target == "teacher":
            label, teacher_rec = self.teacher(student.scale)
            extra, ranges, lr, calib = {"teacher": teacher_rec}, "ema", DEFAULT_LR, None
        else:
            label, extra, lr = student, {}, STUDENT_LR
            if scheme is None:  # TFLite: the PT2E observer, or --calib-method's percentile
                ranges = cfg.calib_method or "histogram"
            else:  # ONNX: its scheme's percentile, or min/max
                ranges = "percentile" if scheme.percentile else "minmax"
            calib = self.calib(student.scale)[0] if activations else None
        qcfg = QATConfig(cfg.qat_steps, lr=cfg.qat_lr or lr, seed=cfg.seed, activations=activations,
                         weight_max=64 if scheme is not None and scheme.reduce_range else 127,
                         float_ends=bool(scheme is not None and scheme.float_end_convs),
                         float_stream=bool(scheme is not None and scheme.float_stream),
                         float_first=bool(scheme is not None and scheme.float_first_conv),
                         pixel_tail=activations and self.fmt.pixel_tail,
                         target=cfg.qat_target, ranges=ranges, percentile=percentile)
        inputs = DataFreeInputs(self.run, student.scale, None, cfg.seed)
        tuned, rec = finetune(student, label, inputs, qcfg, calib)
        return tuned, {**rec, **extra}


def _write(job: _Job, stage: int, student: SRStudent, path: Path, calib: list | None, qat: bool = False,
           cfg: ExportConfig | None = None) -> dict:
    cfg = cfg or job.cfg
    if qat and job.fmt.int8_scheme is not None and cfg.tail_refit is not False:
        # QAT fitted the whole file to the original student; a tail refit would fit it to the fine-tuned one
        cfg = replace(cfg, tail_refit=False)
    recs = {}
    if cfg.equalize and calib and cfg.precision == "int8":  # same function, int8-friendlier ranges
        student, recs["equalization"] = equalize(student, calib)
    fp32 = student
    if cfg.gptq and calib:  # int8 / w8a16: the weights' grid points chosen against the calibration inputs
        student, recs["gptq"] = gptq_round(student, calib, *_weight_scheme(job.fmt, cfg))
    if cfg.bias_correction and calib:  # int8 / w8a16: biases corrected for the weights' rounding
        student, recs["bias_correction"] = correct_bias(student, calib, *_weight_scheme(job.fmt, cfg),
                                                        reference=fp32)
    try:
        extra = job.fmt.export(build_wrapper(student, cfg.layout, cfg.shuffle), path, cfg, calib,
                               _metadata(job.run, stage, student, cfg, qat))
        return {**extra, **recs}
    except SRShrinkError:
        raise
    except Exception as exc:
        raise SRShrinkError(f"stage {stage}: {cfg.target} {cfg.tag} export failed: {first_line(exc)}") from exc


def _weight_scheme(fmt: Target, cfg: ExportConfig) -> tuple[int, bool, bool]:
    """Return (the int8 weights' largest level, whether head and tail convs are quantized, whether the first body
    conv is) of ``fmt``'s ``cfg.precision`` export: ONNX int8 has 7-bit weights (unless ``--no-reduce-range``), float
    head/tail and a float first body conv with ``--float-first-conv`` (``Int8Scheme``); w8a16 and TFLite int8
    quantize every conv to [-127, 127]."""
    scheme = fmt.scheme_for(cfg) if cfg.precision == "int8" else None
    if scheme is None:
        return 127, True, True
    return (64 if scheme.reduce_range else 127), not scheme.float_end_convs, not scheme.float_first_conv


PARTIAL = ".partial-"  # a file is written and verified as .partial-PID-NAME before it takes its own name


def _final_name(path: Path) -> str:
    """Return the name a file written at ``path`` takes when done (``path``'s own name unless it is a partial one)."""
    name = path.name
    if name.startswith(PARTIAL):
        return name[len(PARTIAL):].split("-", 1)[-1]
    return name


def _remove_dead_partials(out_dir: Path) -> None:
    """Remove the partial files in ``out_dir`` left by exports that were killed outright (their process is gone),
    whatever file they were writing; an export running beside this one keeps its own."""
    for p in out_dir.glob(f"{PARTIAL}*"):
        pid = p.name[len(PARTIAL):].split("-", 1)[0]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            _remove(p)
        except (ValueError, PermissionError, OSError):  # not ours to judge: another user's, or not a pid
            pass


def _export_stage(job: _Job, stage: int, out_dir: Path) -> dict:
    """Write, check and verify stage ``stage``'s file under a partial name in ``out_dir``, then give it its own name
    (replacing an older file of that name only then); return its export.json entry. A failed or interrupted stage
    leaves no partial file, and an older file of the same name stays as it was."""
    final = out_dir / job.cfg.file_name(stage)
    _remove_dead_partials(out_dir)
    partial = out_dir / f"{PARTIAL}{os.getpid()}-{final.name}"
    try:
        entry = _export_stage_as(job, stage, partial)
        _remove(final)
        partial.rename(final)
    except SRShrinkError as exc:  # a message from a writer or runner names the file the user asked for
        _remove(partial)
        text = str(exc)
        if partial.name not in text:
            raise
        raise SRShrinkError(text.replace(str(partial), str(final)).replace(partial.name, final.name)) from exc
    except BaseException:
        _remove(partial)
        raise
    entry.update(file=final.name, path=str(final.resolve()))
    return entry


def _export_stage_as(job: _Job, stage: int, path: Path) -> dict:
    cfg = job.cfg
    original, _ = load_stage(job.run.stages[stage])
    student, qat_rec = job.finetune(original) if cfg.qat_steps else (original, None)
    calib, calib_rec = job.calib(student.scale) if cfg.uses_calib else (None, None)
    t0 = time.perf_counter()
    calibrating = f" (int8, calibrating on {len(calib)} inputs)" if calib else ""
    with task(f"stage {stage}: writing {_final_name(path)}{calibrating}"):
        extra = _write(job, stage, student, path, calib, qat=qat_rec is not None)
    seconds = time.perf_counter() - t0
    graph = job.fmt.graph(path)
    checks = _checked(cfg.target, graph, path)
    entry = _entry(job, stage, student, path, graph, checks, extra, seconds)
    entry["options"] = dict(job.options)
    if entry.get("io_dtype") == "float32":  # --native-io on a file whose own precision takes float32 I/O anyway
        entry["options"].pop("native_io", None)
    if calib_rec:
        entry["calibration"] = calib_rec
    entry["verification"] = _verify(job, path, student) if cfg.verify else not_verified("skipped", "")
    entry["verified"] = entry["verification"]["verified"]
    if qat_rec is not None:
        entry.update(_qat_fields(job, stage, original, path, calib, qat_rec))
    return entry


def _qat_fields(job: _Job, stage: int, original: SRStudent, path: Path, calib: list | None, rec: dict) -> dict:
    """Return the entry fields of a QAT export: ``qat_steps``, ``ptq_delta_psnr_y`` and ``qat_delta_psnr_y``
    (None when verification is off or could not run) and the ``qat`` record.

    Both deltas are measured against the **original** fp32 student (the one in stage_XX.pt), on the
    verification images: ``qat_delta_psnr_y`` verifies the QAT file at ``path`` against it
    (``qat.fp32_verification``); ``ptq_delta_psnr_y`` is the file ``export`` writes of the original student
    without ``--qat`` (:meth:`ExportConfig.without_qat`: GPTQ and bias correction as the target does by default;
    same calibration inputs, written to a temporary folder and deleted) verified against it
    (``qat.ptq_verification``). The entry's own ``verification`` compares the file with its source, the
    fine-tuned float student."""
    fields = {"qat_steps": job.cfg.qat_steps, "ptq_delta_psnr_y": None, "qat_delta_psnr_y": None}
    if job.cfg.verify:
        plain = job.cfg.without_qat()
        if calib is None and plain.uses_calib:  # Core ML int8: the QAT file takes none, its GPTQ'd PTQ file does
            calib = job.calib(original.scale)[0]
        with tempfile.TemporaryDirectory() as tmp:
            ptq_path = Path(tmp) / job.cfg.file_name(stage)
            with task(f"stage {stage}: writing the file without --qat to compare (PTQ of the original student)"):
                _write(job, stage, original, ptq_path, calib, cfg=plain)
            rec["ptq_verification"] = ptq = _verify(job, ptq_path, original)
        rec["fp32_verification"] = qat = _verify(job, path, original)
        fields["ptq_delta_psnr_y"] = ptq.get("delta_psnr_y")
        fields["qat_delta_psnr_y"] = qat.get("delta_psnr_y")
    rec["deltas"] = ("ptq_delta_psnr_y: Y-PSNR of the export of the original student without --qat minus the "
                     "original fp32 student's; qat_delta_psnr_y: Y-PSNR of this QAT file minus the same original fp32 "
                     "student's; verification.delta_psnr_y: this file minus its own source, the fine-tuned float "
                     "student")
    return {**fields, "qat": rec}


def _checked(target: str, graph: GraphInfo, path: Path) -> dict:
    try:
        return check_graph(target, graph)
    except SRShrinkError as exc:
        _remove(path)
        raise SRShrinkError(f"{_final_name(path)}: {exc}") from None


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def _verify(job: _Job, path: Path, student: SRStudent) -> dict:
    cfg = job.cfg
    runtime = runtime_label(job.fmt.runtime)
    try:
        if job.fmt.check_io is not None:
            job.fmt.check_io(path, cfg)
        runner = open_runner(path, threads=torch.get_num_threads())
        if job.fmt.verify_shapes is not None and cfg.shapes:  # every enumerated size
            return job.fmt.verify_shapes(runner, student, job.pairs(student.scale), student.scale, cfg.shapes,
                                         tolerance_key(cfg.precision, cfg.palettize), runner.label)
        pairs = job.pairs(student.scale)
        if cfg.input_size:  # a fixed size: fewer images when it is large (each is padded to it)
            pairs = pairs[:images_at(len(pairs), (cfg.input_size,))[cfg.input_size]]
        return verify(runner, student, pairs, student.scale, cfg.input_size,
                      tolerance_key(cfg.precision, cfg.palettize), runner.label)
    except UnsupportedOp as exc:
        return not_verified(str(exc), runtime)
    except SRShrinkError:
        raise
    except Exception as exc:  # noqa: BLE001 - a runtime that cannot run the file is recorded, not hidden
        return not_verified(f"{type(exc).__name__}: {first_line(exc)}", runtime)


def _metadata(run: RunDir, stage: int, student: SRStudent, cfg: ExportConfig, qat: bool = False) -> dict:
    record = run.record
    rec = record.stage(stage)
    meta = {"producer": f"sr-shrink {__version__}", "scale": student.scale, "stage": stage,
            "n_blocks": student.n_blocks, "channels": student.channels,
            "params": sum(p.numel() for p in student.parameters()), "precision": cfg.tag, "layout": cfg.layout,
            "value_range": "RGB in [0, 1]"}
    if qat:
        meta["qat_steps"] = cfg.qat_steps
    for key in ("val_psnr_y", "val_ssim_y"):
        if rec is not None and rec.get(key) is not None:
            meta[key] = rec.get(key)
    for key in ("teacher_psnr_y", "bicubic_psnr_y", "mode"):
        if record.get(key) is not None:
            meta[key] = record.get(key)
    teacher = record.teacher or {}
    if teacher.get("arch_name") or teacher.get("path"):
        meta["teacher"] = teacher.get("arch_name") or Path(str(teacher["path"])).name
    return meta


def _shape_policy(cfg: ExportConfig) -> str:
    if cfg.input_size:
        return f"fixed {cfg.input_size[0]}x{cfg.input_size[1]} LR input, batch 1"
    if cfg.shapes:
        return f"enumerated LR sizes {', '.join(f'{h}x{w}' for h, w in cfg.shapes)} (default first), batch 1"
    lo, hi = get_target(cfg.target).size_range
    return f"free LR height and width ({lo}..{hi}), batch 1"


def _entry(job: _Job, stage: int, student: SRStudent, path: Path, graph: GraphInfo, checks: dict, extra: dict,
           seconds: float) -> dict:
    cfg = job.cfg
    return {"file": path.name, "path": str(path.resolve()), "target": cfg.target, "precision": cfg.precision,
            "tag": cfg.tag, "stage": stage, "scale": student.scale, "n_blocks": student.n_blocks,
            "channels": student.channels, "params": sum(p.numel() for p in student.parameters()),
            "checkpoint": job.run.stages[stage].name, "layout": cfg.layout, "shape_policy": _shape_policy(cfg),
            "input_size": list(cfg.input_size) if cfg.input_size else None, "inputs": graph.inputs,
            **({"shapes": [list(s) for s in cfg.shapes]} if cfg.shapes else {}),
            "outputs": graph.outputs, "io_dtype": graph.inputs[0]["dtype"] if graph.inputs else None,
            "pixel_shuffle": cfg.shuffle, "size_bytes": path_size(path), "ops": graph.ops, "graph_checks": checks,
            **extra, "export_seconds": round(seconds, 2), "created": now_iso(), "sr_shrink_version": __version__}


def path_size(path: Path) -> int:
    """Return the size in bytes of a file, or of all files under a folder (an .mlpackage)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size

