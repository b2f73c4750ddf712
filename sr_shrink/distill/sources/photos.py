"""Real photos as the student's input source (``--mode data``): LR/HR patch pairs cut from a folder of images
(bicubic degradation), with the teacher's output as target, or the HR ground truth (``--data-target hr``)."""

from __future__ import annotations

import torch

from ...data import Picture, list_images, make_lr, random_patches, read_picture
from ...errors import SRShrinkError


def compact(pic: Picture) -> torch.Tensor:
    """Return ``pic``'s RGB as kept in memory for training: uint8 for an 8-bit image (its samples are k/255
    exactly, so :func:`~sr_shrink.data.random_patches` gives the same float patches at a quarter of the memory: a
    folder of 100 12 MP photos is 3.6 GB instead of 14.4), float otherwise (16-bit and float grey)."""
    return pic.rgb.mul(255).round().to(torch.uint8) if pic.bits == 8 else pic.rgb


class RealPatches:
    """Random LR/HR training pairs from a folder of images (the with-data baseline's source)."""

    def __init__(self, folder, scale: int, lr_patch: int):
        self.scale, self.lr_patch = scale, lr_patch
        paths = list_images(folder)
        self.images = [compact(read_picture(p)) for p in paths]
        side = lr_patch * scale
        small = [(p, i.shape[-1], i.shape[-2]) for p, i in zip(paths, self.images) if min(i.shape[-2:]) < side]
        if small:
            (path, w, h), more = small[0], f" (and {len(small) - 1} more)" if len(small) > 1 else ""
            raise SRShrinkError(f"{path}{more}: {w}x{h} px, smaller than one {side} px training patch (--lr-patch "
                                f"{lr_patch} at x{scale}); take it out of {folder} or pass a smaller --lr-patch.")

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (lr, hr) patch batches: HR crops with random flips/rotations and their bicubic LR."""
        hr = random_patches(self.images, n, self.lr_patch * self.scale, g)
        return make_lr(hr, self.scale), hr


