"""psnr_y / ssim_y against hand-computed cases; MATLAB-bicubic imresize properties."""

import math

import pytest
import torch
import torch.nn.functional as F

from sr_shrink.metrics import _gaussian_window, _prepare, psnr_y, quantize, rgb_to_y, ssim_y
from sr_shrink.resize import cubic, downscale, imresize, upscale


def test_rgb_to_y_bt601_range():
    black, white = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)
    assert rgb_to_y(black).item() == pytest.approx(16.0)
    assert rgb_to_y(white).item() == pytest.approx(235.0)


def test_psnr_y_hand_computed():
    ref = torch.zeros(1, 3, 8, 8)
    img = torch.full((1, 3, 8, 8), 1.0 / 219.0)  # Y differs by exactly 1 level everywhere -> MSE 1
    assert psnr_y(img, ref) == pytest.approx(10 * math.log10(255**2), abs=1e-6)
    img2 = torch.full((1, 3, 8, 8), 2.0 / 219.0)  # MSE 4
    assert psnr_y(img2, ref) == pytest.approx(10 * math.log10(255**2 / 4), abs=1e-6)


def test_psnr_y_crop_border_ignores_edges():
    ref = torch.rand(3, 16, 16)
    img = ref.clone()
    img[:, :2, :] = 0  # damage only the top two rows
    assert psnr_y(img, ref, crop_border=2) == float("inf")
    assert psnr_y(img, ref, crop_border=1) < 40


def test_ssim_y_identical_and_flat_hand_computed():
    x = torch.rand(1, 3, 32, 32)
    assert ssim_y(x, x) == pytest.approx(1.0, abs=1e-12)
    a, b = torch.full((3, 16, 16), 0.25), torch.full((3, 16, 16), 0.5)
    ya, yb = 16 + 219 * 0.25, 16 + 219 * 0.5
    c1 = (0.01 * 255) ** 2
    expected = (2 * ya * yb + c1) / (ya**2 + yb**2 + c1)  # zero variances: the contrast term is 1
    assert ssim_y(a, b) == pytest.approx(expected, rel=1e-9)


def test_ssim_y_uses_valid_11x11_window():
    x, y = torch.rand(3, 10, 10), torch.rand(3, 10, 10)
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(x, y)  # smaller than the window: valid filtering has no output
    g = torch.Generator().manual_seed(0)  # two unrelated random images can score below 0 (SSIM is in [-1, 1])
    a, b = torch.rand(3, 11, 11, generator=g), torch.rand(3, 11, 11, generator=g)
    assert ssim_y(a, a) == pytest.approx(1.0) and -1 <= ssim_y(a, b) < 1  # exactly the window: one output pixel


def _ssim_2d(img, ref, crop_border=0):
    """The SSIM formula as it was first written: four 11x11 (121-tap) conv2d passes, kept as the reference."""
    a, b = _prepare(img, crop_border), _prepare(ref, crop_border)
    win = _gaussian_window()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, win), F.conv2d(b, win)
    var_a = F.conv2d(a * a, win) - mu_a**2
    var_b = F.conv2d(b * b, win) - mu_b**2
    cov = F.conv2d(a * b, win) - mu_a * mu_b
    ssim_map = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(ssim_map.mean(dim=(1, 2, 3)).mean())


@pytest.mark.parametrize("seed", range(8))
def test_ssim_y_separable_equals_the_2d_window(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 1 + seed % 3
    h, w = 11 + int(torch.randint(0, 90, (1,), generator=gen)), 11 + int(torch.randint(0, 90, (1,), generator=gen))
    ref = torch.rand(n, 3, h, w, generator=gen)
    noise = (0.02 + 0.3 * seed / 8) * torch.randn(n, 3, h, w, generator=gen)
    img = quantize(ref + noise)
    border = seed % 3 if min(h, w) - 2 * (seed % 3) >= 11 else 0
    assert ssim_y(img, ref, border) == pytest.approx(_ssim_2d(img, ref, border), abs=1e-6)
    assert abs(ssim_y(img, ref, border) - _ssim_2d(img, ref, border)) < 1e-12  # in fact float64 rounding only


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError):
        psnr_y(torch.rand(3, 8, 8), torch.rand(3, 8, 9))


def test_quantize_rounds_to_8_bit():
    x = torch.tensor([-0.2, 0.6 / 255, 1.3])
    assert torch.equal(quantize(x), torch.tensor([0.0, 1 / 255, 1.0]))


def test_cubic_kernel_matlab_values():
    x = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    expected = torch.tensor([1.0, 0.5625, 0.0, -0.0625, 0.0, 0.0])
    assert torch.allclose(cubic(x), expected)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_imresize_shapes_and_constant(scale):
    img = torch.full((2, 3, 24, 36), 0.37, dtype=torch.float64)
    lr = downscale(img, scale)
    assert lr.shape == (2, 3, 24 // scale, 36 // scale)
    assert torch.allclose(lr, torch.full_like(lr, 0.37))
    up = upscale(lr, scale)
    assert up.shape == img.shape
    assert torch.allclose(up, img)


def test_imresize_reproduces_linear_ramps_in_the_interior():
    ramp = torch.arange(32, dtype=torch.float64).view(1, 32).expand(4, 32)
    out = imresize(ramp, scale=0.5)
    # MATLAB maps output pixel j (1-based) to input u = 2j - 0.5; cubic reproduces linear functions
    j = torch.arange(1, 17, dtype=torch.float64)
    assert torch.allclose(out[0, 3:-3], (2 * j - 0.5 - 1)[3:-3], atol=1e-9)


def test_imresize_gradient_flows_and_no_rounding():
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    y = downscale(x, 2)
    assert not torch.equal(y, quantize(y))  # not rounded
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_imresize_needs_one_of_scale_or_size():
    with pytest.raises(ValueError):
        imresize(torch.rand(1, 4, 4))
    assert imresize(torch.rand(1, 8, 8), size=(4, 6)).shape == (1, 4, 6)


def test_a_stage_is_scored_and_its_fidelity_measured_from_one_pass():
    """distill scored each stage on the eval images and again on the teacher's references (the same LR images):
    two forward passes of the student where one gives both. The scores are those of the two passes."""
    from sr_shrink.data import EvalPair
    from sr_shrink.evaluate import evaluate_model, evaluate_with_fidelity, fidelity, reference_pairs

    g = torch.Generator().manual_seed(0)
    pairs = [EvalPair(f"im{i}", torch.rand(3, 24, 32, generator=g), torch.rand(3, 12, 16, generator=g))
             for i in range(3)]
    teacher_out = {p.name: quantize(upscale(p.lr.unsqueeze(0), 2))[0] for p in pairs}
    refs = reference_pairs(teacher_out, pairs)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    calls = []
    net.register_forward_hook(lambda *_: calls.append(1))
    res, fid = evaluate_with_fidelity(net, pairs, refs, 2)
    assert len(calls) == 3
    assert res == evaluate_model(net, pairs, 2) and fid == fidelity(evaluate_model(net, refs, 2))
    assert fid["fidelity_psnr_y"] != res["psnr_y"]
    assert evaluate_with_fidelity(net, pairs, [], 2)[1] == {}
