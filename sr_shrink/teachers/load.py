"""``load_teacher``: read a teacher file, recognise the network, probe what is left, wrap it as a Teacher.

Order: the file format (:mod:`.formats`); an sr-shrink checkpoint; sr-shrink's own detectors for bare
state_dicts (:mod:`.detect`: EDSR, which spandrel lacks, MSRResNet, VDSR, students); then spandrel for every
other architecture it knows (:mod:`.zoo`). TorchScript, torch.export and trusted pickled modules are opaque:
their scale, channels and value range come from running them (:mod:`.probe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SRShrinkError, first_line
from ..models.registry import build_model, is_sr_shrink_checkpoint
from .detect import ARCH_NAMES, Detected, detect
from .formats import TEACHER_FILES, ZOO_INSTALL, Loaded, describe, read, refuse_non_teacher, sha256_file, unwrap
from .probe import PROBE_SIZES, SizeRequirements, guess_value_range, probe
from .wrapper import Teacher, TeacherInfo, eval_mode
from .zoo import load_zoo

ASSETS = Path(__file__).resolve().parents[1] / "assets"
DEFAULT_TEACHER = ASSETS / "teacher_x2.pt"


def default_teacher(scale: int | None = None) -> Path:
    """Return the path of the bundled teacher for ``scale`` (x2 when ``None``); an error naming the bundled
    scales when there is none for that scale."""
    path = ASSETS / f"teacher_x{scale or 2}.pt"
    if not path.is_file():
        have = sorted(int(p.stem.split("_x")[1]) for p in ASSETS.glob("teacher_x*.pt"))
        raise SRShrinkError(f"no bundled x{scale} teacher (sr-shrink ships x{', x'.join(map(str, have))}); pass "
                            "the path to your own teacher file.")
    return path
VALUE_RANGES = (1.0, 255.0)


@dataclass
class _Found:
    """A network recognised in a file, with what is known of its conventions (None: find out by probing)."""

    net: nn.Module
    format: str
    arch: str
    arch_name: str
    detected_by: str
    config: dict[str, Any] = field(default_factory=dict)
    value_range: float | None = None
    y_only: bool | None = None
    pre_upsample: bool = False
    scale: int | None = None
    channels: int | None = None
    tags: list[str] = field(default_factory=list)
    size: SizeRequirements = field(default_factory=SizeRequirements)
    tiling: str = "supported"


def load_teacher(path: str | Path | None = None, scale: int | None = None, trust_pickle: bool = False,
                 value_range: float | None = None, device: str | torch.device = "cpu",
                 res_scale: float | None = None) -> Teacher:
    """Return the teacher at ``path`` (default: the bundled teacher for ``scale``, x2 when no scale is given)
    wrapped as a :class:`Teacher`.

    ``scale`` is checked against the network's own (or required for pre-upsampling networks such as VDSR).
    ``value_range`` (1 or 255) overrides the range the network works in (inferred from the format, or probed
    for opaque TorchScript/.pt2 files; ``teacher.info.value_range_guessed`` says when the probe was not
    clear-cut). ``res_scale`` overrides EDSR's residual scaling, which its weights cannot reveal (0.1 for the
    papers' 256-feature EDSR, 1 otherwise). ``trust_pickle`` allows a full pickled ``nn.Module``.
    Every failure is one :class:`SRShrinkError` line.
    """
    path = Path(path) if path else default_teacher(scale)
    refuse_non_teacher(path)
    if path.is_dir():  # a distill run, a folder of weights: not "no such file"
        stages = sorted(path.glob("stage_*.pt"))
        hint = f"its students are files such as {stages[-1]}" if stages else f"pass a teacher file ({TEACHER_FILES})"
        raise SRShrinkError(f"{path}: is a folder, not a model file; {hint}.")
    if not path.is_file():
        raise SRShrinkError(f"{path}: no such file; pass the path to a teacher ({TEACHER_FILES}).")
    if path.stat().st_size == 0:
        raise SRShrinkError(f"{path}: the file is empty; check the download.")
    if value_range is not None and float(value_range) not in VALUE_RANGES:
        raise SRShrinkError(f"value range {value_range:g} is not supported; use 1 or 255.")
    if res_scale is not None and not (math.isfinite(res_scale) and 0 < res_scale <= 10):
        raise SRShrinkError(f"res_scale {res_scale} must be a number in (0, 10], e.g. 0.1 or 1.")

    found = _recognise(read(path, trust_pickle), path, res_scale)
    net = found.net
    eval_mode(net)
    if value_range is not None:
        found.value_range = float(value_range)
    conv_scale, guessed = _settle_conventions(found, path, scale)
    info = TeacherInfo(path=str(path), format=found.format, arch=found.arch, scale=int(conv_scale),
                       value_range=float(found.value_range or 1.0), y_only=bool(found.y_only),
                       pre_upsample=found.pre_upsample, params=sum(p.numel() for p in net.parameters()),
                       config=found.config, sha256=sha256_file(path), arch_name=found.arch_name, tags=found.tags,
                       size_requirements=found.size, value_range_guessed=guessed, detected_by=found.detected_by,
                       tiling=found.tiling)
    return Teacher(net, info).to(device)


def _recognise(loaded: Loaded, path: Path, res_scale: float | None) -> _Found:
    """Return the :class:`_Found` network in ``loaded``: opaque module, sr-shrink checkpoint or state_dict."""
    obj = loaded.obj
    if isinstance(obj, nn.Module):
        if res_scale is not None:
            raise SRShrinkError(f"{path}: --res-scale applies to EDSR state_dicts; a {loaded.format} file has it "
                                "built in.")
        return _Found(obj, loaded.format, type(obj).__name__, type(obj).__name__, "probe")
    if not isinstance(obj, dict):
        raise SRShrinkError(f"{path}: holds a {describe(obj)}, not a model or state_dict.")
    if is_sr_shrink_checkpoint(obj):
        arch, config = obj["arch"], obj.get("config")
        if not isinstance(arch, str) or not isinstance(config, dict) or not isinstance(obj["state_dict"], dict):
            raise SRShrinkError(f"{path}: damaged sr-shrink checkpoint (no arch, config or state_dict).")
        vdsr = arch == "vdsr"  # Y channel in, bicubic pre-upsampled
        det = Detected(arch, ARCH_NAMES.get(arch, arch), dict(config), obj["state_dict"],
                       value_range=float(obj.get("value_range", 1.0)), y_only=vdsr, pre_upsample=vdsr)
        return _build(det, path, res_scale, "sr-shrink checkpoint", damaged=True)
    sd = unwrap(obj)
    if not sd or not any(torch.is_tensor(v) for v in sd.values()):
        raise SRShrinkError(f"{path}: not a state_dict of tensors (found {describe(sd)}); pass SR model weights.")
    det = detect(sd)
    if det is not None:
        return _build(det, path, res_scale, loaded.format)
    zoo = load_zoo(sd, path)
    if zoo is None:
        keys = ", ".join(map(str, list(sd)[:4]))
        raise SRShrinkError(
            f"{path}: state_dict of an unknown architecture (keys {keys}, ...). sr-shrink itself infers EDSR, "
            f"MSRResNet, VDSR and its own students; for ESRGAN, Real-ESRGAN, SwinIR, HAT, SPAN and more, {ZOO_INSTALL}."
        )
    if res_scale is not None:
        raise SRShrinkError(f"{path}: --res-scale applies to EDSR teachers, not to this {zoo.arch_name}.")
    return _Found(zoo.net, loaded.format, zoo.arch, zoo.arch_name, f"spandrel {zoo.version}", config=zoo.config,
                  value_range=1.0, y_only=zoo.channels == 1, scale=zoo.scale, channels=zoo.channels, tags=zoo.tags,
                  size=zoo.size, tiling=zoo.tiling)


def _build(det: Detected, path: Path, res_scale: float | None, fmt: str, damaged: bool = False) -> _Found:
    """Return the :class:`_Found` sr-shrink network built from ``det`` (with ``res_scale`` for EDSR)."""
    config = dict(det.config)
    if res_scale is not None:
        if det.arch != "edsr":
            raise SRShrinkError(f"{path}: --res-scale applies to EDSR teachers, not to this {det.arch_name}.")
        config["res_scale"] = float(res_scale)
    try:
        net = build_model(det.arch, config)
        net.load_state_dict(det.state_dict, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        if damaged:
            raise SRShrinkError(f"{path}: damaged sr-shrink checkpoint ({first_line(exc)}).") from None
        raise SRShrinkError(f"{path}: weights do not fit the inferred {det.arch} ({first_line(exc)}).") from None
    return _Found(net, fmt, det.arch, det.arch_name, "sr-shrink", config=config, value_range=det.value_range,
                  y_only=det.y_only, pre_upsample=det.pre_upsample, channels=1 if det.y_only else 3,
                  tags=list(det.tags))


def _settle_conventions(found: _Found, path: Path, scale: int | None) -> tuple[int, bool]:
    """Probe ``found.net`` for what is not known yet; return (scale, value_range_guessed), updating ``found``."""
    if found.pre_upsample:
        if scale is None:
            raise SRShrinkError(f"{path}: {found.arch} keeps the input size (it expects bicubic-upsampled input); "
                                "pass --scale to say which factor it was trained for.")
        return scale, False
    known = found.channels is not None
    pr = probe(found.net, path, found.size, channels=(found.channels,) if known else (3, 1),
               sizes=(16,) if known else PROBE_SIZES)
    if found.scale is not None and pr.ratio != found.scale:
        raise SRShrinkError(f"{path}: {found.arch_name} should upscale x{found.scale} but gives x{pr.ratio} on a "
                            "test image; the file may be damaged.")
    if pr.ratio == 1:
        if scale is None:
            raise SRShrinkError(f"{path}: the network keeps the input size (a pre-upsampling network); "
                                "pass --scale to say which factor it was trained for.")
        found.pre_upsample = True
        net_scale = scale
    else:
        net_scale = pr.ratio
        if scale is not None and scale != pr.ratio:
            raise SRShrinkError(f"{path}: this network upscales x{pr.ratio}, not x{scale}; "
                                f"pass --scale {pr.ratio} or another teacher.")
    if found.y_only is None:
        found.y_only = pr.channels == 1
    guessed = False
    if found.value_range is None:
        found.value_range, guessed = guess_value_range(found.net, pr)
    return net_scale, guessed
