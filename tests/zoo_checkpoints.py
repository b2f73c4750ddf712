"""Random-weight checkpoints of model-zoo architectures, built with spandrel's own classes and saved in the
layouts the projects publish (key names and wrapper dicts), for tests/test_zoo.py and benchmarks/zoo_teachers.py.

Each builder writes one file and returns a :class:`ZooCase`: the file, the reference network (its own
``forward`` is the ground truth), the scale and spandrel's architecture id.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from sr_shrink.teachers.zoo import import_spandrel

import_spandrel()  # spandrel's package imports torchvision; this makes it importable even where that is broken

from spandrel.architectures.Compact import Compact  # noqa: E402
from spandrel.architectures.ESRGAN import ESRGAN  # noqa: E402
from spandrel.architectures.OmniSR import OmniSR  # noqa: E402
from spandrel.architectures.SPAN import SPAN  # noqa: E402
from spandrel.architectures.SwinIR import SwinIR  # noqa: E402


@dataclass
class ZooCase:
    """One checkpoint: ``path``, the reference network ``ref`` (eval mode), ``scale``, spandrel's ``arch``
    id and ``layout`` (how the file wraps the weights)."""

    name: str
    path: Path
    ref: nn.Module
    scale: int
    arch: str
    layout: str


def _randomise(m: nn.Module, seed: int) -> nn.Module:
    """Give every parameter small random values (zero-initialised layers would hide mistakes) and eval()."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return m.eval()


def esrgan_to_basicsr(sd: dict, n_up: int) -> dict:
    """Return an RRDBNet state_dict in Real-ESRGAN/BasicSR key names, from the old ESRGAN ``model.N`` names.

    Old layout: model.0 first conv, model.1.sub.{i}.RDB{j}.conv{k}.0 the dense blocks, model.1.sub.{nb} the
    trunk conv, then per x2 upsampling stage [upsample, conv, lrelu], then HR conv, lrelu, last conv.
    """
    nb = max(int(m.group(1)) for k in sd if (m := re.match(r"model\.1\.sub\.(\d+)\.RDB", k))) + 1
    names = {"model.0": "conv_first", f"model.1.sub.{nb}": "conv_body", f"model.{3 * n_up + 2}": "conv_hr",
             f"model.{3 * n_up + 4}": "conv_last"}
    names.update({f"model.{3 * (i + 1)}": f"conv_up{i + 1}" for i in range(n_up)})
    out = {}
    for k, v in sd.items():
        mod, kind = k.rsplit(".", 1)
        m = re.fullmatch(r"model\.1\.sub\.(\d+)\.RDB(\d)\.conv(\d)\.0", mod)
        out[f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}.{kind}" if m else f"{names[mod]}.{kind}"] = v
    return out


def rrdbnet_x4(d: Path, num_filters: int = 16, num_blocks: int = 1, seed: int = 0) -> ZooCase:
    """Real-ESRGAN RRDBNet x4 as in RealESRGAN_x4plus.pth: ``{"params_ema": sd}``, BasicSR key names."""
    m = _randomise(ESRGAN(in_nc=3, out_nc=3, num_filters=num_filters, num_blocks=num_blocks, scale=4), seed)
    path = d / f"RRDBNet_x4_{num_filters}nf_{num_blocks}nb.pth"
    torch.save({"params_ema": esrgan_to_basicsr(m.state_dict(), 2)}, path)
    return ZooCase("RRDBNet x4", path, m, 4, "ESRGAN", "params_ema, BasicSR keys")


def rrdbnet_x2_unshuffle(d: Path, seed: int = 1) -> ZooCase:
    """Real-ESRGAN RRDBNet x2 as in RealESRGAN_x2plus.pth: pixel-unshuffle by 2, 12-channel first conv, x4 body."""
    m = _randomise(ESRGAN(in_nc=12, out_nc=3, num_filters=16, num_blocks=1, scale=4, shuffle_factor=2), seed)
    path = d / "RRDBNet_x2_unshuffle.pth"
    torch.save({"params_ema": esrgan_to_basicsr(m.state_dict(), 2)}, path)
    return ZooCase("RRDBNet x2 (pixel-unshuffle)", path, m, 2, "ESRGAN", "params_ema, BasicSR keys")


def compact(d: Path, scale: int = 4, seed: int = 2, name: str | None = None) -> ZooCase:
    """SRVGGNetCompact as in realesr-animevideov3.pth: ``{"params": sd}``."""
    m = _randomise(Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=scale), seed)
    path = d / (name or f"Compact_x{scale}.pth")
    torch.save({"params": m.state_dict()}, path)
    return ZooCase(f"SRVGGNetCompact x{scale}", path, m, scale, "Compact", "params")


def compact_safetensors(d: Path, seed: int = 3) -> ZooCase:
    """SRVGGNetCompact x2 as a bare state_dict in a .safetensors file (as model databases distribute them)."""
    from safetensors.torch import save_file

    m = _randomise(Compact(num_in_ch=3, num_out_ch=3, num_feat=16, num_conv=4, upscale=2), seed)
    path = d / "Compact_x2.safetensors"
    save_file({k: v.contiguous() for k, v in m.state_dict().items()}, str(path))
    return ZooCase("SRVGGNetCompact x2", path, m, 2, "Compact", ".safetensors, bare")


def swinir(d: Path, seed: int = 4) -> ZooCase:
    """SwinIR classical SR x2 (window 8, pixelshuffle upsampler) as the official release: ``{"params": sd}``."""
    m = _randomise(SwinIR(upscale=2, img_size=32, window_size=8, embed_dim=24, depths=[2, 2], num_heads=[2, 2],
                          mlp_ratio=2.0, upsampler="pixelshuffle", resi_connection="1conv"), seed)
    path = d / "SwinIR_x2_w8.pth"
    torch.save({"params": m.state_dict()}, path)
    return ZooCase("SwinIR x2 (w8, small)", path, m, 2, "SwinIR", "params")


def span(d: Path, seed: int = 5) -> ZooCase:
    """SPAN x4 (48 feats in the paper; 16 here) as BasicSR-trained releases: ``{"params_ema": sd}``."""
    m = _randomise(SPAN(num_in_ch=3, num_out_ch=3, feature_channels=16, upscale=4), seed)
    path = d / "SPAN_x4.pth"
    torch.save({"params_ema": m.state_dict()}, path)
    return ZooCase("SPAN x4", path, m, 4, "SPAN", "params_ema")


def omnisr(d: Path, seed: int = 6) -> ZooCase:
    """OmniSR x3 (64 feats in the paper; 16 here, window 8) as a bare state_dict."""
    m = _randomise(OmniSR(num_in_ch=3, num_out_ch=3, num_feat=16, block_num=1, window_size=8, res_num=1,
                          up_scale=3), seed)
    path = d / "OmniSR_x3.pth"
    torch.save(m.state_dict(), path)
    return ZooCase("OmniSR x3", path, m, 3, "OmniSR", "bare")


BUILDERS: dict[str, Callable[[Path], ZooCase]] = {
    "rrdbnet_x4": rrdbnet_x4, "rrdbnet_x2_unshuffle": rrdbnet_x2_unshuffle, "compact_x4": compact,
    "compact_safetensors": compact_safetensors, "swinir": swinir, "span": span, "omnisr": omnisr}
