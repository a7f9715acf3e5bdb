"""LlamaGen's image preprocessing, in PIL and torch (no torchvision): its centre crop, ``[-1, 1]``
tensors, and the views code extraction encodes. Design notes: docs/data.md.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..errors import DataError
from .pixels import images_to_tensor

# augmentation name -> views per image, in the order extraction_views returns them
AUGMENTATIONS = {"none": 1, "flip": 2, "ten-crop": 10}

# LlamaGen's --crop-range: the ten crops are cut from a centre crop this much larger
TEN_CROP_RANGE = 1.1


def center_crop(image: Image.Image, image_size: int) -> Image.Image:
    """The ``image_size x image_size`` centre crop of ``image`` after LlamaGen's resize.

    While the short side is at least ``2 * image_size`` the image is halved (BOX filter, sizes
    floored); then it is resized with BICUBIC by ``image_size / short side`` (sizes rounded), and
    the centre square is cut (offsets floored)."""
    _check_size(image_size, "image_size")
    while min(image.size) >= 2 * image_size:
        image = image.resize((image.width // 2, image.height // 2), resample=Image.BOX)
    scale = image_size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)), resample=Image.BICUBIC)
    left = (image.width - image_size) // 2
    top = (image.height - image_size) // 2
    return image.crop((left, top, left + image_size, top + image_size))


def to_tensor(image: Image.Image) -> torch.Tensor:
    """``[C, H, W]`` float32 in ``[-1, 1]`` (``C = 1`` for a grayscale image, 3 for RGB)."""
    return images_to_tensor(image, value_range=(-1.0, 1.0))[0]


def ten_crop(image: Image.Image, crop_size: int) -> list[Image.Image]:
    """Ten ``crop_size`` squares: top-left, top-right, bottom-left, bottom-right and centre of
    ``image``, then the same five of its horizontal mirror. The centre offset is rounded."""
    _check_size(crop_size, "crop_size")
    if min(image.size) < crop_size:
        raise DataError(f"cannot cut {crop_size}x{crop_size} crops from a {image.width}x{image.height} image; resize it first")
    mirror = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return _five_crop(image, crop_size) + _five_crop(mirror, crop_size)


def _five_crop(image: Image.Image, size: int) -> list[Image.Image]:
    right, bottom = image.width - size, image.height - size
    center_left, center_top = int(round(right / 2)), int(round(bottom / 2))
    corners = [(0, 0), (right, 0), (0, bottom), (right, bottom), (center_left, center_top)]
    return [image.crop((x, y, x + size, y + size)) for x, y in corners]


def extraction_views(
    image: Image.Image, image_size: int, augment: str = "flip", crop_range: float = TEN_CROP_RANGE
) -> torch.Tensor:
    """The views of one image that code extraction encodes: ``[A, C, image_size, image_size]`` in
    ``[-1, 1]``, ``A = AUGMENTATIONS[augment]``. View 0 is always the plain centre crop for
    ``"none"`` and ``"flip"``; for ``"ten-crop"`` view 4 is the centre crop (of the larger crop)."""
    if augment not in AUGMENTATIONS:
        raise DataError(f"unknown augmentation {augment!r}; choose one of {sorted(AUGMENTATIONS)}")
    if augment == "ten-crop":
        crops = ten_crop(center_crop(image, int(image_size * crop_range)), image_size)
        return torch.stack([to_tensor(crop) for crop in crops])
    view = to_tensor(center_crop(image, image_size))
    if augment == "flip":
        return torch.stack([view, view.flip(-1)])
    return view[None]


def _check_size(size: int, name: str) -> None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise DataError(f"{name} must be a positive integer, got {size!r}")
