"""The one image-to-tensor converter and PSNR, against direct numpy computations."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from masc_hf.data.pixels import LUMA_WEIGHTS, images_to_tensor, psnr
from masc_hf.errors import DataError


def uint8_images(shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def test_value_ranges_are_linear_maps_of_every_uint8_value():
    values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16)
    unit = images_to_tensor(values, value_range=(0.0, 1.0))
    signed = images_to_tensor(values, value_range=(-1.0, 1.0))
    raw = images_to_tensor(values, value_range=None)
    assert unit.shape == signed.shape == raw.shape == (1, 1, 16, 16)
    assert unit.dtype == signed.dtype == torch.float32 and raw.dtype == torch.uint8
    np.testing.assert_array_equal(unit.flatten().numpy(), (np.arange(256) / np.float32(255)).astype(np.float32))
    # the same float32 values as x / 127.5 - 1 and as ToTensor() then Normalize(0.5, 0.5)
    x = torch.arange(256, dtype=torch.float32)
    assert torch.equal(signed.flatten(), x / 127.5 - 1) and torch.equal(signed.flatten(), (x / 255 - 0.5) / 0.5)
    assert torch.equal(raw.flatten(), torch.arange(256, dtype=torch.uint8))


def test_layouts_numpy_torch_pil_and_lists_agree():
    rgb = uint8_images((3, 5, 7, 3))
    expected = torch.from_numpy(rgb).permute(0, 3, 1, 2).float() / 255
    for images, kwargs in [
        (rgb, {}),
        (list(rgb), {}),
        ([Image.fromarray(image) for image in rgb], {}),
        (torch.from_numpy(rgb).permute(0, 3, 1, 2), {}),
        (torch.from_numpy(rgb), {"torch_channels_last": True}),
    ]:
        tensor = images_to_tensor(images, value_range=(0.0, 1.0), **kwargs)
        assert tensor.is_contiguous() and torch.equal(tensor, expected)
    gray = uint8_images((2, 4, 4))
    assert images_to_tensor(Image.fromarray(gray[0]), value_range=None).shape == (1, 1, 4, 4)
    assert images_to_tensor(torch.from_numpy(gray), value_range=None).shape == (2, 1, 4, 4)


def test_channels_gray_replicated_rgb_to_luma_alpha_dropped():
    gray = uint8_images((2, 6, 6))
    replicated = images_to_tensor(gray, channels=3)
    assert replicated.shape == (2, 3, 6, 6) and all(torch.equal(replicated[:, c], replicated[:, 0]) for c in (1, 2))
    rgba = uint8_images((2, 6, 6, 4), seed=1)
    luma = images_to_tensor(rgba, value_range=(0.0, 1.0), channels=1)
    expected = (rgba[..., :3].astype(np.float64) / 255 * np.array(LUMA_WEIGHTS)).sum(axis=-1)
    np.testing.assert_allclose(luma[:, 0].numpy(), expected, atol=1e-6)
    assert torch.equal(images_to_tensor(rgba, channels=3), images_to_tensor(rgba[..., :3], channels=3))
    assert images_to_tensor(rgba).shape == (2, 4, 6, 6)  # channels=None keeps them all
    with pytest.raises(DataError, match="1, 3 or 4 channels"):
        images_to_tensor(uint8_images((2, 6, 6, 2)), channels=3)


def test_padding_centres_on_a_background_canvas():
    images = uint8_images((2, 5, 6))
    padded = images_to_tensor(images, value_range=(-1.0, 1.0), pad_to=9, channels=3)
    assert padded.shape == (2, 3, 9, 9)
    inside = torch.zeros(9, 9, dtype=torch.bool)
    inside[2:7, 1:7] = True  # offsets floored: (9 - 5) // 2, (9 - 6) // 2
    assert torch.equal(padded[:, :, inside].reshape(2, 3, 5, 6), images_to_tensor(images, channels=3))
    assert (padded[:, :, ~inside] == -1).all()
    assert (images_to_tensor(images, value_range=None, pad_to=9)[:, :, ~inside] == 0).all()
    with pytest.raises(DataError, match="do not fit"):
        images_to_tensor(images, pad_to=4)


def test_floats_only_when_allowed_and_only_in_the_unit_range():
    floats = np.random.default_rng(2).random((2, 4, 4))
    with pytest.raises(DataError, match="must be uint8, got float64"):
        images_to_tensor(floats)
    tensor = images_to_tensor(floats, value_range=(-1.0, 1.0), allow_float=True)
    np.testing.assert_allclose(tensor[:, 0].numpy(), floats * 2 - 1, atol=1e-6)
    with pytest.raises(DataError, match=r"\(x \+ 1\) / 2"):
        images_to_tensor(floats * 2 - 1, allow_float=True)


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((4, 4), dtype=np.uint8), r"\[n, H, W\]"),
        (np.zeros((2, 4, 4), dtype=np.int32), "must be uint8"),
        ("image.png", "PIL images"),
        ([np.zeros((4, 4), np.uint8), np.zeros((5, 4), np.uint8)], "different shapes"),
        (Image.new("I", (4, 4)), "8-bit"),
    ],
)
def test_bad_input_is_refused(bad, match):
    with pytest.raises(DataError, match=match):
        images_to_tensor(bad)


def test_psnr_of_floats_and_tensors():
    assert psnr(0.01) == pytest.approx(20.0)
    assert psnr(0.04, data_range=2.0) == pytest.approx(20.0)
    assert psnr(0.0) == math.inf
    mse = torch.tensor([0.01, 0.001, 0.0], dtype=torch.float64)
    assert torch.equal(psnr(mse), 10 * torch.log10(1.0 / mse))
    assert psnr(mse)[2] == math.inf
