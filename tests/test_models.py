"""Model zoo: EDSR reference key layout, student growth, VDSR/MSRResNet shapes."""

import pytest
import torch

from sr_shrink.models.edsr import EDSR
from sr_shrink.models.msrresnet import MSRResNet
from sr_shrink.models.student import SRStudent, grow
from sr_shrink.models.vdsr import VDSR


@pytest.mark.parametrize("scale,ups", [(2, ["tail.0.0.weight"]), (3, ["tail.0.0.weight"]),
                                       (4, ["tail.0.0.weight", "tail.0.2.weight"])])
def test_edsr_reference_keys_and_strict_round_trip(scale, ups, tmp_path):
    m = EDSR(scale=scale, n_resblocks=2, n_feats=8)
    keys = set(m.state_dict())
    expected = {"sub_mean.weight", "sub_mean.bias", "add_mean.weight", "add_mean.bias", "head.0.weight",
                "head.0.bias", "body.0.body.0.weight", "body.0.body.2.weight", "body.1.body.2.bias",
                "body.2.weight", "tail.1.weight", "tail.1.bias", *ups}
    assert expected <= keys
    assert not any(k.startswith("tail.0.4") for k in keys)
    torch.save(m.state_dict(), tmp_path / "m.pt")
    m2 = EDSR(scale=scale, n_resblocks=2, n_feats=8)
    m2.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True), strict=True)
    x = torch.rand(1, 3, 8, 8) * 255
    assert torch.equal(m(x), m2(x))
    assert m(x).shape == (1, 3, 8 * scale, 8 * scale)


def test_edsr_meanshift_matches_reference_values():
    m = EDSR(n_resblocks=1, n_feats=4, rgb_range=255)
    assert torch.allclose(m.sub_mean.bias, -255 * torch.tensor([0.4488, 0.4371, 0.4040]))
    assert not m.sub_mean.weight.requires_grad


def test_edsr_bicubic_skip_starts_as_bicubic():
    m = EDSR(scale=2, n_resblocks=1, n_feats=4, rgb_range=1.0, skip="bicubic")
    x = torch.rand(1, 3, 8, 8)
    ref = torch.nn.functional.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False)
    assert torch.allclose(m(x), ref, atol=1e-6)


def test_vdsr_and_msrresnet_shapes():
    assert VDSR(depth=4, channels=8)(torch.rand(1, 1, 12, 12)).shape == (1, 1, 12, 12)
    for s in (2, 3, 4):
        assert MSRResNet(num_feat=8, num_block=1, upscale=s)(torch.rand(1, 3, 6, 6)).shape == (1, 3, 6 * s, 6 * s)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_student_growth_preserves_output_exactly(scale):
    torch.manual_seed(0)
    s = SRStudent(scale, 2, 8)
    for p in s.parameters():
        torch.nn.init.normal_(p, 0, 0.1)
    x = torch.rand(2, 3, 10, 12)
    g = grow(s, torch.Generator().manual_seed(1))
    assert g.n_blocks == 3 and len(g.body) == 3
    assert torch.equal(g(x), s(x))
    assert g.body[-1].conv1.weight.abs().sum() > 0  # the new block is not dead
    g2 = grow(g)
    assert torch.equal(g2(x), s(x))


def test_student_starts_as_nearest_upsampling():
    s = SRStudent(3, 1, 4)
    x = torch.rand(1, 3, 5, 5)
    ref = torch.nn.functional.interpolate(x, scale_factor=3, mode="nearest")
    assert torch.allclose(s(x), ref)
