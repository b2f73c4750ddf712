"""The one image reader (sr_shrink.data): photos for distill and calibration and eval folders are read as upscale
reads them: upright by EXIF, 16-bit and float grey at their own range, out-of-range samples refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sr_shrink.data import load_eval_set, read_image, read_picture
from sr_shrink.errors import SRShrinkError


def test_16_bit_grey_is_read_at_its_own_range(tmp_path):
    """PIL's convert("RGB") clips 16-bit grey at 255 (a ramp read almost all white); it is /65535."""
    ramp = np.linspace(0, 65535, 32 * 40).reshape(32, 40).round().astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    img = read_image(tmp_path / "g16.png")
    assert img.shape == (3, 32, 40)
    want = torch.from_numpy(ramp.astype(np.float64) / 65535).float()
    assert torch.allclose(img[0], want, atol=1e-6) and torch.equal(img[0], img[2])


def test_float_grey_in_0_1_is_read_as_is_and_comes_back_16_bit(tmp_path):
    """A float TIFF in [0, 1] was read black (convert clips every sample below 1 to 0)."""
    ramp = np.linspace(0, 1, 24 * 30, dtype=np.float32).reshape(24, 30)
    Image.fromarray(ramp).save(tmp_path / "f32.tif")
    pic = read_picture(tmp_path / "f32.tif")
    assert pic.grey and pic.bits == 16
    assert torch.allclose(pic.rgb[1], torch.from_numpy(ramp), atol=1e-7)


@pytest.mark.parametrize("values, says", [(np.float32(255.0), "float grey image with samples in [0, 255]"),
                                          (np.float32(np.nan), "float grey image")])
def test_float_grey_outside_0_1_is_one_error(tmp_path, values, says):
    """Float samples outside [0, 1] (0..255 floats, NaN) used to be clipped in silence."""
    arr = np.linspace(0, 1, 16 * 16, dtype=np.float32).reshape(16, 16) * values
    Image.fromarray(arr.astype(np.float32)).save(tmp_path / "bad.tif")
    with pytest.raises(SRShrinkError, match="rescale it, or save it as an 8- or 16-bit PNG") as exc:
        read_image(tmp_path / "bad.tif")
    assert says in str(exc.value) and str(tmp_path / "bad.tif") in str(exc.value)


def test_a_phone_photo_in_a_photo_folder_is_read_upright(tmp_path):
    """EXIF orientation 6 (stored sideways, shown turned) is applied for distill's and calibration's photos too,
    as it was for upscale's inputs only."""
    rng = np.random.default_rng(0)
    stored = Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8))  # 30 wide, 40 high
    exif = stored.getexif()
    exif[0x0112] = 6
    stored.save(tmp_path / "phone.png", exif=exif)
    img = read_image(tmp_path / "phone.png")
    assert img.shape == (3, 30, 40)  # turned: 40 wide, 30 high
    want = np.asarray(stored.transpose(Image.Transpose.ROTATE_270), dtype=np.float32) / 255
    assert torch.equal(img, torch.from_numpy(want).permute(2, 0, 1))


def test_eval_folder_of_8_bit_pngs_reads_as_before(tmp_path):
    """The plain case is unchanged: 8-bit RGB at /255 exactly, RGBA's alpha left out."""
    rng = np.random.default_rng(1)
    rgba = rng.integers(0, 256, (64, 64, 4), dtype=np.uint8)
    Image.fromarray(rgba).save(tmp_path / "a.png")
    (pair,) = load_eval_set(2, tmp_path)
    assert torch.equal(pair.hr, torch.from_numpy(rgba[..., :3].astype(np.float32) / 255).permute(2, 0, 1))


def test_training_photos_are_kept_as_bytes_and_give_the_same_patches(tmp_path):
    """--mode data kept every photo as float32 (14.4 GB for 100 12 MP photos); 8-bit photos are kept as uint8 and
    random_patches gives bit-identical float patches; a 16-bit grey photo stays float (bytes would round it)."""
    from sr_shrink.data import random_patches
    from sr_shrink.distill.sources.photos import RealPatches

    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    Image.fromarray((rng.random((44, 36)) * 65535).astype(np.uint16)).save(tmp_path / "b.png")
    src = RealPatches(tmp_path, 2, 8)
    assert [im.dtype for im in src.images] == [torch.uint8, torch.float32]
    floats = [read_image(tmp_path / "a.png"), read_image(tmp_path / "b.png")]
    assert src.images[1].mul(65535).sub(src.images[1].mul(65535).round()).abs().max() < 1e-2  # 16 bits kept
    got = random_patches(src.images, 12, 16, torch.Generator().manual_seed(5))
    want = random_patches(floats, 12, 16, torch.Generator().manual_seed(5))
    assert got.dtype == torch.float32 and torch.equal(got, want)
