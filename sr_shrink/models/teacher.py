"""Load any SR teacher and normalise it to one calling convention.

``load_teacher(path)`` accepts a TorchScript file, a ``torch.export`` .pt2 archive, a state_dict (or a dict
wrapping one: ``params_ema``/``params``/``state_dict``/``model``...) whose architecture, width, depth and scale
are inferred from its keys and shapes, an sr-shrink checkpoint, or a full pickled ``nn.Module`` only with
``trust_pickle=True``. It returns a :class:`Teacher`: RGB float in [0, 1], (N,3,h,w) -> (N,3,s*h,s*w), with
value range, Y-only and pre-upsampling teachers handled by the wrapper. Every failure is an
:class:`~sr_shrink.errors.SRShrinkError` with a one-line message.
"""

from __future__ import annotations

import hashlib
import math
import pickle
import re
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import SRShrinkError
from ..resize import upscale
from .edsr import EDSR, RGB_MEAN
from .registry import build_model, is_sr_shrink_checkpoint

DEFAULT_TEACHER = Path(__file__).resolve().parents[1] / "assets" / "teacher_x2.pt"
WRAPPER_KEYS = ("params_ema", "params", "state_dict", "model_state_dict", "model", "net", "network", "generator")

_RGB2YCBCR = torch.tensor([[65.481, 128.553, 24.966], [-37.797, -74.203, 112.0], [112.0, -93.786, -18.214]]) / 255
_YCBCR_OFFSET = torch.tensor([16.0, 128.0, 128.0]) / 255


def rgb_to_ycbcr(img: torch.Tensor) -> torch.Tensor:
    """Return BT.601 YCbCr in [0, 1] (Y in [16/255, 235/255]) of an RGB (N,3,H,W) image in [0, 1]."""
    m = _RGB2YCBCR.to(img)
    return torch.einsum("ij,njhw->nihw", m, img) + _YCBCR_OFFSET.to(img).view(1, 3, 1, 1)


def ycbcr_to_rgb(img: torch.Tensor) -> torch.Tensor:
    """Return RGB in [0, 1] of a BT.601 YCbCr (N,3,H,W) image in [0, 1] (inverse of ``rgb_to_ycbcr``)."""
    m = torch.linalg.inv(_RGB2YCBCR.double()).to(img)
    return torch.einsum("ij,njhw->nihw", m, img - _YCBCR_OFFSET.to(img).view(1, 3, 1, 1))


@dataclass
class TeacherInfo:
    """What ``load_teacher`` found: file format, architecture, scale and the conventions it adapted."""

    path: str
    format: str
    arch: str
    scale: int
    value_range: float
    y_only: bool = False
    pre_upsample: bool = False
    params: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    sha256: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return the info as a JSON-ready dict."""
        return asdict(self)


class Teacher(nn.Module):
    """Wraps a loaded network so it maps RGB [0,1] (N,3,h,w) to RGB [0,1] (N,3,s*h,s*w), frozen and in eval."""

    def __init__(self, net: nn.Module, info: TeacherInfo):
        super().__init__()
        self.net, self.info, self.scale = net, info, info.scale
        _eval_mode(self.net)
        for p in self.net.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Teacher":
        """Keep the teacher in eval mode whatever is asked (it is never trained)."""
        self.training = False
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        info = self.info
        inp = upscale(x, self.scale) if info.pre_upsample else x
        if info.y_only:
            ycc = rgb_to_ycbcr(inp)
            y = self.net(ycc[:, :1] * info.value_range) / info.value_range
            cbcr = ycc[:, 1:] if info.pre_upsample else upscale(ycc[:, 1:], self.scale)
            return ycbcr_to_rgb(torch.cat([y, cbcr], dim=1))
        return self.net(inp * info.value_range) / info.value_range


def _eval_mode(net: nn.Module) -> None:
    """Put ``net`` in eval mode; torch.export modules refuse the call and are already fixed graphs."""
    try:
        net.eval()
    except NotImplementedError:
        pass


def sha256_file(path: str | Path) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _read(path: Path, trust_pickle: bool) -> tuple[str, Any]:
    """Return (format, object) read from ``path``: a module for TorchScript/.pt2, else what torch.load gives."""
    names: list[str] = []
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    try:
        if any("/code/" in n for n in names):
            return "torchscript", torch.jit.load(str(path), map_location="cpu")
        if any(n.endswith("archive_format") for n in names) or path.suffix == ".pt2":
            return "torch.export", torch.export.load(str(path)).module()
    except Exception as exc:  # a damaged archive
        raise SRShrinkError(f"{path}: cannot load this archive ({_short(exc)}); re-export the teacher.") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Weights only load failed" in str(exc):
            raise SRShrinkError(
                f"{path}: holds pickled Python objects (e.g. a whole nn.Module); loading it would run code from "
                "the file. Pass --trust-pickle only if you trust its source, or save model.state_dict() instead."
            ) from None
        raise SRShrinkError(f"{path}: not a readable PyTorch checkpoint ({_short(exc)}).") from None
    except Exception as exc:
        raise SRShrinkError(
            f"{path}: truncated or not a PyTorch checkpoint ({_short(exc)}); check the file or download it again."
        ) from None
    return ("pickle" if isinstance(obj, nn.Module) else "state_dict"), obj


def _short(exc: BaseException) -> str:
    msg = str(exc).strip().splitlines()
    return (msg[0] if msg else type(exc).__name__)[:160]


def _unwrap(obj: dict) -> dict:
    """Return the state_dict inside common wrapper dicts, with any DataParallel ``module.`` prefix removed."""
    for _ in range(3):
        key = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if key is None:
            break
        obj = obj[key]
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


def _count(sd: dict, pattern: str) -> int:
    return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def _edsr_config(sd: dict) -> tuple[dict, float]:
    n_feats = sd["head.0.weight"].shape[0]
    ups = sorted(k for k in sd if re.fullmatch(r"tail\.0\.\d+\.weight", k))
    scale = 3 if sd[ups[0]].shape[0] == 9 * n_feats else 2 ** len(ups)
    rgb_range = float(-sd["sub_mean.bias"][0] / RGB_MEAN[0]) if "sub_mean.bias" in sd else 255.0
    rgb_range = round(rgb_range) if rgb_range > 1.5 else 1.0
    cfg = dict(scale=scale, n_resblocks=_count(sd, r"body\.(\d+)\.body\.0\.weight"), n_feats=n_feats,
               res_scale=0.1 if n_feats >= 256 else 1.0, rgb_range=rgb_range)
    return cfg, rgb_range


def _basicsr_edsr_to_ref(sd: dict) -> dict:
    n = _count(sd, r"body\.(\d+)\.conv1\.weight")
    out = {}
    for k, v in sd.items():
        k2 = (k.replace("conv_first", "head.0").replace("conv_after_body", f"body.{n}")
              .replace("upsample.", "tail.0.").replace("conv_last", "tail.1"))
        k2 = re.sub(r"^body\.(\d+)\.conv1", r"body.\1.body.0", k2)
        k2 = re.sub(r"^body\.(\d+)\.conv2", r"body.\1.body.2", k2)
        out[k2] = v
    ref = EDSR(rgb_range=255.0)
    for name in ("sub_mean", "add_mean"):
        out[f"{name}.weight"] = getattr(ref, name).weight.data.clone()
        out[f"{name}.bias"] = getattr(ref, name).bias.data.clone()
    return out


def _from_state_dict(sd: dict, path: Path) -> tuple[str, nn.Module, dict, dict]:
    """Return (arch, net, config, conventions) for a bare state_dict, inferring the architecture."""
    if not sd or not all(torch.is_tensor(v) for v in sd.values()):
        raise SRShrinkError(f"{path}: not a state_dict of tensors (found {_describe(sd)}); pass SR model weights.")
    conv: dict[str, Any] = {"value_range": 1.0}
    if {"head.0.weight", "tail.1.weight", "body.0.body.0.weight"} <= sd.keys():
        cfg, conv["value_range"] = _edsr_config(sd)
        arch = "edsr"
    elif {"conv_first.weight", "conv_after_body.weight", "upsample.0.weight"} <= sd.keys():
        sd = _basicsr_edsr_to_ref(sd)
        cfg, _ = _edsr_config(sd)
        cfg["rgb_range"] = 255.0
        arch, conv["value_range"] = "edsr", 255.0
    elif {"conv_first.weight", "upconv1.weight", "conv_hr.weight"} <= sd.keys():
        nf = sd["conv_first.weight"].shape[0]
        up = 4 if "upconv2.weight" in sd else int(round(math.sqrt(sd["upconv1.weight"].shape[0] / nf)))
        cfg = dict(num_in_ch=sd["conv_first.weight"].shape[1], num_out_ch=sd["conv_last.weight"].shape[0],
                   num_feat=nf, num_block=_count(sd, r"body\.(\d+)\.conv1\.weight"), upscale=up)
        arch = "msrresnet"
    elif {"input.weight", "residual_layer.0.conv.weight", "output.weight"} <= sd.keys():
        cfg = dict(depth=_count(sd, r"residual_layer\.(\d+)\.conv\.weight") + 2, channels=sd["input.weight"].shape[0])
        arch = "vdsr"
        conv.update(y_only=True, pre_upsample=True)
    elif {"head.weight", "tail.weight", "body.0.conv1.weight"} <= sd.keys() or (
            {"head.weight", "tail.weight"} <= sd.keys() and sd["tail.weight"].shape[0] % 3 == 0):
        cfg = dict(scale=int(round(math.sqrt(sd["tail.weight"].shape[0] / 3))),
                   n_blocks=_count(sd, r"body\.(\d+)\.conv1\.weight"), channels=sd["head.weight"].shape[0])
        arch = "student"
    else:
        keys = ", ".join(list(sd)[:4])
        raise SRShrinkError(
            f"{path}: state_dict of an unknown architecture (keys {keys}, ...). sr-shrink infers EDSR "
            "(EDSR-PyTorch or BasicSR keys), MSRResNet, VDSR and its own students; for other networks pass a "
            "TorchScript or torch.export file."
        )
    net = build_model(arch, cfg)
    try:
        net.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise SRShrinkError(f"{path}: weights do not fit the inferred {arch} ({_short(exc)}).") from None
    return arch, net, cfg, conv


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        return "dict with keys " + ", ".join(map(str, list(obj)[:4]))
    return type(obj).__name__


def _probe_image(size: int, channels: int) -> torch.Tensor:
    """Return a smooth, deterministic test image (1, channels, size, size) in [0.1, 0.9]."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    chans = [0.5 + 0.3 * torch.sin(2 * math.pi * (xx * (c + 1) * 0.7 + yy * 0.5)) for c in range(channels)]
    return torch.stack(chans).unsqueeze(0)


def _probe(net: nn.Module, path: Path) -> tuple[int, int, torch.Tensor, torch.Tensor]:
    """Run ``net`` on a probe image; return (channels, ratio, input, output) or raise a clear error."""
    last_err: BaseException | None = None
    for channels in (3, 1):
        for size in (32, 48, 64, 24):
            x = _probe_image(size, channels)
            try:
                with torch.no_grad():
                    y = net(x)
            except Exception as exc:
                last_err = exc
                continue
            if not torch.is_tensor(y) or y.dim() != 4 or y.shape[1] != channels:
                shape = tuple(y.shape) if torch.is_tensor(y) else type(y).__name__
                raise SRShrinkError(f"{path}: does not look like an image SR network: a {tuple(x.shape)} input "
                                    f"gave {shape}; pass a network that maps images to larger images.")
            rh, rw = y.shape[2] / size, y.shape[3] / size
            if rh != rw or rh != int(rh) or rh < 1:
                raise SRShrinkError(f"{path}: output {tuple(y.shape)} for input {tuple(x.shape)} is not an integer "
                                    "upscaling; pass an SR network.")
            return channels, int(rh), x, y
    raise SRShrinkError(f"{path}: could not run the network on a test image ({_short(last_err)}); "
                        "is it an image SR network taking (N,3,h,w) or (N,1,h,w)?")


def _guess_value_range(net: nn.Module, x: torch.Tensor, ratio: int, y1: torch.Tensor) -> float:
    """Return 1.0 or 255.0: which input scaling makes ``net`` behave like an upscaler of the probe image."""
    ref = upscale(x, ratio) if ratio > 1 else x
    with torch.no_grad():
        y255 = net(x * 255.0) / 255.0
    err1 = (y1 - ref).abs().mean().item()
    err255 = (y255 - ref).abs().mean().item()
    return 255.0 if err255 < err1 else 1.0


def load_teacher(path: str | Path | None = None, scale: int | None = None, trust_pickle: bool = False,
                 value_range: float | None = None, device: str | torch.device = "cpu") -> Teacher:
    """Return the teacher at ``path`` (default: the bundled x2 teacher) wrapped as a :class:`Teacher`.

    ``scale`` is checked against the network's own (or required for pre-upsampling networks such as VDSR);
    ``value_range`` (1 or 255) overrides the range inferred for opaque formats.
    """
    path = Path(path) if path else DEFAULT_TEACHER
    if not path.is_file():
        raise SRShrinkError(f"{path}: no such file; pass the path to a teacher (.pt/.pth state_dict, "
                            "TorchScript or torch.export .pt2).")
    if path.stat().st_size == 0:
        raise SRShrinkError(f"{path}: the file is empty; check the download.")
    fmt, obj = _read(path, trust_pickle)
    conv: dict[str, Any] = {}
    config: dict[str, Any] = {}
    if isinstance(obj, nn.Module):
        net, arch = obj, type(obj).__name__
        if fmt == "pickle":
            fmt = "pickled nn.Module"
    elif isinstance(obj, dict) and is_sr_shrink_checkpoint(obj):
        arch, config = obj["arch"], dict(obj["config"])
        try:
            net = build_model(arch, config)
            net.load_state_dict(obj["state_dict"], strict=True)
        except (KeyError, TypeError, RuntimeError) as exc:
            raise SRShrinkError(f"{path}: damaged sr-shrink checkpoint ({_short(exc)}).") from None
        conv = {"value_range": float(obj.get("value_range", 1.0))}
        if arch == "vdsr":
            conv.update(y_only=True, pre_upsample=True)
        fmt = "sr-shrink checkpoint"
    elif isinstance(obj, dict):
        arch, net, config, conv = _from_state_dict(_unwrap(obj), path)
    else:
        raise SRShrinkError(f"{path}: holds a {_describe(obj)}, not a model or state_dict.")

    _eval_mode(net)
    if conv.get("pre_upsample"):
        if scale is None:
            raise SRShrinkError(f"{path}: {arch} keeps the input size (it expects bicubic-upsampled input); "
                                "pass --scale to say which factor it was trained for.")
        net_scale = scale
    else:
        channels, ratio, x, y = _probe(net, path)
        if ratio == 1:
            if scale is None:
                raise SRShrinkError(f"{path}: the network keeps the input size (a pre-upsampling network); "
                                    "pass --scale to say which factor it was trained for.")
            conv["pre_upsample"], net_scale = True, scale
        else:
            net_scale = ratio
            if scale is not None and scale != ratio:
                raise SRShrinkError(f"{path}: this network upscales x{ratio}, not x{scale}; "
                                    f"pass --scale {ratio} or another teacher.")
        conv.setdefault("y_only", channels == 1)
        if "value_range" not in conv:
            conv["value_range"] = _guess_value_range(net, x, ratio, y)
    if value_range is not None:
        conv["value_range"] = float(value_range)
    info = TeacherInfo(path=str(path), format=fmt, arch=arch, scale=int(net_scale),
                       value_range=float(conv.get("value_range", 1.0)), y_only=bool(conv.get("y_only", False)),
                       pre_upsample=bool(conv.get("pre_upsample", False)),
                       params=sum(p.numel() for p in net.parameters()), config=config, sha256=sha256_file(path))
    return Teacher(net, info).to(device)


def count_macs(model: nn.Module, input_size: tuple[int, int] = (256, 256), channels: int = 3) -> int:
    """Return the multiply-accumulates of one forward pass of ``model`` on a (1, channels, h, w) input."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.rand(1, channels, *input_size, device=next((p.device for p in model.parameters()), "cpu"))
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x)
    return counter.get_total_flops() // 2
