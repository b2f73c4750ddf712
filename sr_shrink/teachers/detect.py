"""sr-shrink's own architecture detectors: one small function per family, reading shapes from the state_dict.

Each detector returns a :class:`Detected` (what to build from ``sr_shrink.models`` and how to call it) or
None. A detector claims a state_dict only when *every* key fits its family's key pattern, so networks that
share a few key names (SwinIR, HAT and RRDBNet also have ``conv_first``/``conv_after_body``/``upsample.0``)
fall through to the next detector and, last, to spandrel (:mod:`sr_shrink.teachers.zoo`).

Families: EDSR (EDSR-PyTorch keys, and BasicSR keys converted to them), MSRResNet (BasicSR), VDSR (the
common PyTorch port; Y channel, bicubic pre-upsampled input) and sr-shrink's own students.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from ..models.edsr import RGB_MEAN, MeanShift

ARCH_NAMES = {"edsr": "EDSR", "vdsr": "VDSR", "msrresnet": "MSRResNet", "student": "sr-shrink student",
              "fsrcnn": "FSRCNN", "espcn": "ESPCN"}


@dataclass
class Detected:
    """A state_dict recognised by an sr-shrink detector.

    ``arch`` and ``config`` rebuild the network through ``sr_shrink.models.registry.build_model``;
    ``state_dict`` has the keys that network expects; ``value_range`` is the range of its input and output
    (1 or 255); ``y_only`` and ``pre_upsample`` describe networks that take a bicubic-upsampled Y channel.
    """

    arch: str
    arch_name: str
    config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    value_range: float = 1.0
    y_only: bool = False
    pre_upsample: bool = False
    tags: list[str] = field(default_factory=list)


def _fits(sd: dict, required: str, patterns: str) -> bool:
    """Return True if ``sd`` has the weight of every module in ``required`` (space-separated names) and every
    key is ``MODULE.weight`` or ``MODULE.bias`` with MODULE fully matching one of ``patterns`` (space-separated
    regular expressions)."""
    rx = re.compile(r"(?:{})\.(?:weight|bias)".format("|".join(patterns.split())))
    return all(f"{m}.weight" in sd for m in required.split()) and all(
        isinstance(k, str) and rx.fullmatch(k) for k in sd)


def _count(sd: dict, pattern: str) -> int:
    """Return the number of distinct values of group 1 of ``pattern`` over the keys (e.g. residual blocks)."""
    return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def _edsr_config(sd: dict) -> dict[str, Any]:
    """Return the EDSR constructor arguments that fit a reference-layout state_dict."""
    n_feats = sd["head.0.weight"].shape[0]
    ups = sorted(k for k in sd if re.fullmatch(r"tail\.0\.\d+\.weight", k))
    scale = 3 if sd[ups[0]].shape[0] == 9 * n_feats else 2 ** len(ups)
    rgb_range = float(-sd["sub_mean.bias"][0] / RGB_MEAN[0]) if "sub_mean.bias" in sd else 255.0
    rgb_range = float(round(rgb_range)) if rgb_range > 1.5 else 1.0
    # The papers' large EDSR (256 feats) scales its residuals by 0.1, the baseline (64) does not; the
    # state_dict cannot tell, so --res-scale overrides this.
    return dict(scale=scale, n_resblocks=_count(sd, r"body\.(\d+)\.body\.0\.weight"), n_feats=n_feats,
                res_scale=0.1 if n_feats >= 256 else 1.0, rgb_range=rgb_range)


def detect_edsr(sd: dict) -> Detected | None:
    """EDSR with the reference EDSR-PyTorch keys (``head.0``, ``body.N.body.{0,2}``, ``tail.*``, MeanShifts)."""
    if not _fits(sd, "head.0 tail.1 body.0.body.0",
                 r"sub_mean add_mean head\.0 body\.\d+\.body\.[02] body\.\d+ tail\.0\.\d+ tail\.1"):
        return None
    cfg = _edsr_config(sd)
    return Detected("edsr", "EDSR", cfg, sd, value_range=cfg["rgb_range"],
                    tags=[f"{cfg['n_feats']}nf", f"{cfg['n_resblocks']}nb"])


def detect_basicsr_edsr(sd: dict) -> Detected | None:
    """EDSR with BasicSR keys (``conv_first``, ``body.N.conv{1,2}``, ``conv_after_body``, ``upsample.*``).

    BasicSR keeps the mean as a plain attribute and runs the body on (x - mean) * 255, which is EDSR-PyTorch's
    network at rgb_range 255; the keys are renamed to the reference layout and the MeanShifts added.
    """
    if not _fits(sd, "conv_first conv_after_body upsample.0 body.0.conv1",
                 r"conv_first body\.\d+\.conv[12] conv_after_body upsample\.\d+ conv_last"):
        return None
    n = _count(sd, r"body\.(\d+)\.conv1\.weight")
    ref: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k2 = (k.replace("conv_first", "head.0").replace("conv_after_body", f"body.{n}")
              .replace("upsample.", "tail.0.").replace("conv_last", "tail.1"))
        k2 = re.sub(r"^body\.(\d+)\.conv1", r"body.\1.body.0", k2)
        k2 = re.sub(r"^body\.(\d+)\.conv2", r"body.\1.body.2", k2)
        ref[k2] = v
    for name, sign in (("sub_mean", -1), ("add_mean", 1)):
        shift = MeanShift(255.0, sign=sign)
        ref[f"{name}.weight"], ref[f"{name}.bias"] = shift.weight.data, shift.bias.data
    cfg = _edsr_config(ref)
    cfg["rgb_range"] = 255.0
    return Detected("edsr", "EDSR (BasicSR)", cfg, ref, value_range=255.0,
                    tags=[f"{cfg['n_feats']}nf", f"{cfg['n_resblocks']}nb"])


def detect_msrresnet(sd: dict) -> Detected | None:
    """BasicSR's MSRResNet (SRResNet without BN; ``upconv1``/``upconv2``, ``conv_hr``, bilinear skip)."""
    if not _fits(sd, "conv_first upconv1 conv_hr", r"conv_first body\.\d+\.conv[12] upconv[12] conv_hr conv_last"):
        return None
    nf = sd["conv_first.weight"].shape[0]
    up = 4 if "upconv2.weight" in sd else int(round(math.sqrt(sd["upconv1.weight"].shape[0] / nf)))
    cfg = dict(num_in_ch=sd["conv_first.weight"].shape[1], num_out_ch=sd["conv_last.weight"].shape[0],
               num_feat=nf, num_block=_count(sd, r"body\.(\d+)\.conv1\.weight"), upscale=up)
    return Detected("msrresnet", "MSRResNet", cfg, sd, tags=[f"{nf}nf", f"{cfg['num_block']}nb"])


def detect_vdsr(sd: dict) -> Detected | None:
    """VDSR (``input``, ``residual_layer.N.conv``, ``output``): Y channel in, bicubic pre-upsampled."""
    if not _fits(sd, "input residual_layer.0.conv output", r"input residual_layer\.\d+\.conv output"):
        return None
    cfg = dict(depth=_count(sd, r"residual_layer\.(\d+)\.conv\.weight") + 2, channels=sd["input.weight"].shape[0])
    return Detected("vdsr", "VDSR", cfg, sd, y_only=True, pre_upsample=True,
                    tags=[f"{cfg['channels']}nf", f"{cfg['depth']}layers"])


def detect_student(sd: dict) -> Detected | None:
    """An sr-shrink student's bare state_dict (``head``, ``body.N.conv{1,2}``, ``tail`` with 3*s^2 outputs)."""
    if not _fits(sd, "head tail", r"head body\.\d+\.conv[12] tail") or sd["tail.weight"].shape[0] % 3:
        return None
    cfg = dict(scale=int(round(math.sqrt(sd["tail.weight"].shape[0] / 3))),
               n_blocks=_count(sd, r"body\.(\d+)\.conv1\.weight"), channels=sd["head.weight"].shape[0])
    return Detected("student", "sr-shrink student", cfg, sd, tags=[f"{cfg['channels']}nf", f"{cfg['n_blocks']}nb"])


DETECTORS: tuple[Callable[[dict], Detected | None], ...] = (
    detect_edsr, detect_basicsr_edsr, detect_msrresnet, detect_vdsr, detect_student)


def detect(sd: dict) -> Detected | None:
    """Return the first sr-shrink detector's :class:`Detected` for the state_dict ``sd``, or None."""
    if not sd or not all(torch.is_tensor(v) for v in sd.values()):
        return None
    for fn in DETECTORS:
        found = fn(sd)
        if found is not None:
            return found
    return None
