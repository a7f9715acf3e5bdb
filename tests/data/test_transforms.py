"""LlamaGen's transforms against direct numpy computations."""

import numpy as np
import pytest
import torch
from PIL import Image

from masc_hf.data.transforms import AUGMENTATIONS, center_crop, extraction_views, ten_crop, to_tensor
from masc_hf.errors import DataError


def random_image(width, height, seed=0, mode="RGB"):
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8), mode=mode)


@pytest.mark.parametrize("size", [(1, 1), (7, 300), (300, 7), (64, 64), (513, 257), (1000, 999)])
@pytest.mark.parametrize("image_size", [16, 32])
def test_center_crop_is_square_of_the_requested_size(size, image_size):
    assert center_crop(random_image(*size), image_size).size == (image_size, image_size)


def test_center_crop_without_resize_is_the_middle_slice():
    # short side already equals the target: no halving, an identity resize, a centred slice
    image = random_image(50, 20)
    out = np.asarray(center_crop(image, 20))
    left = (50 - 20) // 2
    np.testing.assert_array_equal(out, np.asarray(image)[:, left : left + 20])


def test_center_crop_halves_with_a_box_filter():
    # a 2x-size image made of constant 2x2 blocks halves exactly to the block values
    blocks = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    image = Image.fromarray(np.repeat(np.repeat(blocks, 2, axis=0), 2, axis=1))
    np.testing.assert_array_equal(np.asarray(center_crop(image, 16)), blocks)


def test_center_crop_keeps_a_constant_image_constant():
    image = Image.new("RGB", (97, 131), (12, 200, 77))
    out = np.asarray(center_crop(image, 32))
    assert (out == np.array([12, 200, 77], dtype=np.uint8)).all()


def test_to_tensor_range_shape_and_values():
    image = random_image(9, 5)
    tensor = to_tensor(image)
    assert tensor.shape == (3, 5, 9) and tensor.dtype == torch.float32
    expected = np.asarray(image).transpose(2, 0, 1).astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(tensor.numpy(), expected, atol=1e-6)
    extremes = to_tensor(Image.fromarray(np.array([[0, 255]], dtype=np.uint8), mode="L"))
    assert extremes.shape == (1, 1, 2) and extremes.tolist() == [[[-1.0, 1.0]]]


def test_ten_crop_corners_centre_and_mirrors():
    image = random_image(13, 11)
    arr = np.asarray(image)
    s = 8
    crops = [np.asarray(c) for c in ten_crop(image, s)]
    assert len(crops) == 10
    cy, cx = round((11 - s) / 2), round((13 - s) / 2)
    expected = [arr[:s, :s], arr[:s, -s:], arr[-s:, :s], arr[-s:, -s:], arr[cy : cy + s, cx : cx + s]]
    mirror = arr[:, ::-1]
    mcx = round((13 - s) / 2)
    expected += [mirror[:s, :s], mirror[:s, -s:], mirror[-s:, :s], mirror[-s:, -s:], mirror[cy : cy + s, mcx : mcx + s]]
    for got, want in zip(crops, expected):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(DataError, match="cannot cut"):
        ten_crop(image, 12)


@pytest.mark.parametrize("augment", sorted(AUGMENTATIONS))
def test_extraction_views_shapes_and_range(augment):
    views = extraction_views(random_image(40, 30), 16, augment)
    assert views.shape == (AUGMENTATIONS[augment], 3, 16, 16)
    assert views.min() >= -1 and views.max() <= 1


def test_extraction_views_flip_and_ten_crop_mirrors():
    image = random_image(40, 30)
    flip = extraction_views(image, 16, "flip")
    torch.testing.assert_close(flip[0], to_tensor(center_crop(image, 16)), rtol=0, atol=0)
    torch.testing.assert_close(flip[1], flip[0].flip(-1), rtol=0, atol=0)
    views = extraction_views(image, 16, "ten-crop")
    # the ten crops are cut from a centre crop of int(16 * 1.1) = 17 pixels
    base = to_tensor(center_crop(image, 17))
    torch.testing.assert_close(views[0], base[:, :16, :16], rtol=0, atol=0)
    torch.testing.assert_close(views[3], base[:, 1:, 1:], rtol=0, atol=0)
    # mirror of the top-right crop = top-left crop of the mirror image, and so on
    for a, b in [(5, 1), (6, 0), (7, 3), (8, 2)]:
        torch.testing.assert_close(views[a], views[b].flip(-1), rtol=0, atol=0)


def test_bad_arguments_are_named():
    with pytest.raises(DataError, match="unknown augmentation 'five-crop'"):
        extraction_views(random_image(8, 8), 8, "five-crop")
    with pytest.raises(DataError, match="image_size must be a positive integer"):
        center_crop(random_image(8, 8), 0)
