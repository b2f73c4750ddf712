"""``dead_leaves`` renders by finding each pixel's top disc first; it must stay bit-identical to painting disc
by disc (the implementation it replaced, kept below as the reference), and leave the generator in the same state.
"""

import pytest
import torch

from sr_shrink.distill.render import dead_leaves, pink_noise, texture_bank
from sr_shrink.resize import downscale


def _rand(shape, g):
    return torch.rand(shape, generator=g)


def dead_leaves_painted(n, patch, g, n_discs=160, r_min=0.03, r_max=0.8, shading=0.5, texture=0.5, render=2,
                        leaf_texture=0.0, n_textures=8, max_contrast=0.25):
    """The painter's-algorithm dead leaves as first written: every disc composited over the whole image."""
    size = patch * render
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    u = _rand((n, n_discs), g)
    a, b = r_min**-2, r_max**-2
    radii = (a - u * (a - b)).pow(-0.5)
    centres = _rand((n, n_discs, 2), g) * 1.2 - 0.1
    lum = _rand((n, n_discs, 1), g)
    colours = lum + (_rand((n, n_discs, 3), g) - 0.5) * 0.6 * _rand((n, n_discs, 1), g)
    grads = (_rand((n, n_discs, 2), g) - 0.5) * 1.0 * (_rand((n, n_discs, 1), g) < shading)
    img = _rand((n, 3, 1, 1), g).expand(n, 3, size, size).clone()
    if leaf_texture > 0:
        bank = texture_bank(n, n_textures, size, g)
        pick = torch.randint(0, n_textures, (n, n_discs), generator=g)
        contrast = max_contrast * _rand((n, n_discs), g) * (_rand((n, n_discs), g) < leaf_texture)
        rows = torch.arange(n)
    for k in range(n_discs):
        cy, cx = centres[:, k, 0].view(n, 1, 1), centres[:, k, 1].view(n, 1, 1)
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < radii[:, k].view(n, 1, 1) ** 2).unsqueeze(1)
        shade = grads[:, k, 0].view(n, 1, 1) * (yy - cy) + grads[:, k, 1].view(n, 1, 1) * (xx - cx)
        if leaf_texture > 0:
            shade = shade + contrast[:, k].view(n, 1, 1) * bank[rows, pick[:, k]]
        col = (colours[:, k].view(n, 3, 1, 1) + shade.unsqueeze(1)).clamp(0, 1)
        img = torch.where(mask, col, img)
    img = downscale(img, render)
    textured = (_rand((n, 1, 1, 1), g) < texture).float()
    img = img + textured * 0.5 * (pink_noise(n, patch, g) - 0.5) * _rand((n, 1, 1, 1), g)
    return img.clamp(0, 1)


CASES = [  # (n, patch, keyword overrides)
    (1, 8, {}), (3, 24, {}), (5, 33, {}), (2, 48, {}), (16, 24, {}), (1, 96, {}),
    (4, 24, {"leaf_texture": 0.8}), (2, 40, {"leaf_texture": 0.5, "n_textures": 3}),
    (3, 16, {"n_discs": 7, "r_min": 0.2}), (2, 20, {"render": 3, "shading": 1.0}), (6, 12, {"n_discs": 1}),
    (2, 32, {"r_max": 0.05, "n_discs": 40}),  # small discs: much background left uncovered
]


@pytest.mark.parametrize("seed", [0, 1, 7, 123, 2**31 - 1])
@pytest.mark.parametrize("n, patch, kw", CASES)
def test_dead_leaves_bit_identical_to_painting(seed, n, patch, kw):
    g_new, g_old = torch.Generator().manual_seed(seed), torch.Generator().manual_seed(seed)
    new, old = dead_leaves(n, patch, g_new, **kw), dead_leaves_painted(n, patch, g_old, **kw)
    assert new.dtype == old.dtype and new.shape == old.shape
    assert torch.equal(new, old)
    assert torch.equal(g_new.get_state(), g_old.get_state())  # the same random numbers were drawn

