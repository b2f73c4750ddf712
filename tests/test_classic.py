"""The classic baselines (FSRCNN, ESPCN): exact output shapes, trainability and registry entries."""

from __future__ import annotations

import pytest
import torch

from sr_shrink.models.classic import ESPCN, FSRCNN
from sr_shrink.models.registry import ARCHS, build_model

torch.set_num_threads(1)


@pytest.mark.parametrize("cls", [FSRCNN, ESPCN])
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_output_is_exactly_scale_times_input(cls, scale):
    model = cls(scale).eval()
    with torch.no_grad():
        for h, w in [(7, 11), (16, 16)]:
            y = model(torch.rand(2, 3, h, w))
            assert y.shape == (2, 3, scale * h, scale * w)


@pytest.mark.parametrize("cls", [FSRCNN, ESPCN])
def test_short_training_reduces_l1(cls):
    torch.manual_seed(0)
    model = cls(2)
    hr = torch.rand(4, 3, 16, 16)
    lr = torch.nn.functional.avg_pool2d(hr, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(20):
        loss = (model(lr) - hr).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_registered_and_rebuildable():
    for arch, cls in [("fsrcnn", FSRCNN), ("espcn", ESPCN)]:
        assert ARCHS[arch] is cls
        model = cls(3)
        assert isinstance(build_model(arch, model.config()), cls)


def test_bad_scale_is_rejected():
    with pytest.raises(ValueError):
        FSRCNN(1)
    with pytest.raises(ValueError):
        ESPCN(9)
