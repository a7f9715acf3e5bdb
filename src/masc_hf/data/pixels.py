"""Image collections as tensors, and the PSNR of a pixel error: one home for every room.

:func:`images_to_tensor` turns PIL images, numpy arrays or torch tensors into one ``[n, C, H, W]``
tensor: the value range (``[-1, 1]`` for tokenizers, ``[0, 1]`` for the classifier, or the raw
values), the channels (gray replicated, RGB to luma with ITU-R 601-2 weights, alpha dropped) and an
optional centred canvas are options. :func:`psnr` is ``10 log10(data_range^2 / mse)``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import DataError

__all__ = ["LUMA_WEIGHTS", "images_to_tensor", "is_pil_image", "psnr"]

# ITU-R 601-2 luma weights, PIL's convert("L")
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# a float image whose values reach this far outside [0, 1] is taken to be on another scale
_RANGE_TOLERANCE = 0.05


def images_to_tensor(
    images: Any,
    *,
    value_range: tuple[float, float] | None = (-1.0, 1.0),
    channels: int | None = None,
    pad_to: int | None = None,
    torch_channels_last: bool = False,
    allow_float: bool = False,
) -> torch.Tensor:
    """Images as one contiguous ``[n, C, H, W]`` tensor.

    Args:
        images: a PIL image or a sequence of them (their 8-bit pixel arrays; convert other modes
            first); numpy ``[n, H, W]`` or channels-last ``[n, H, W, C]``; torch ``[n, H, W]`` or
            channels-first ``[n, C, H, W]`` (channels-last with ``torch_channels_last``); a sequence of
            equal-shape arrays (stacked, read as numpy). An array needs its ``n`` axis. Values are
            uint8 in ``[0, 255]``, or, with ``allow_float``, floats in ``[0, 1]`` (clamped there).
        value_range: ``(low, high)``: values mapped linearly, ``0 -> low``, ``255`` (or ``1.0``) ->
            ``high``, as float32; ``None`` keeps the values and their dtype (then, without padding,
            the result may share the input's memory: read it, do not write to it).
        channels: ``None`` keeps the images' channels; otherwise an alpha channel (4 -> 3) is dropped,
            gray is replicated to ``channels``, RGB becomes luma (``LUMA_WEIGHTS``) for ``channels=1``.
        pad_to: centre each image on a ``pad_to x pad_to`` canvas of ``low`` (black; 0 for raw
            values); offsets are floored.
        torch_channels_last: read a 4-d torch tensor as ``[n, H, W, C]``, as numpy arrays are read.
        allow_float: accept float images (else only uint8).
    """
    tensor = _as_nchw(images, torch_channels_last, allow_float)
    if value_range is not None:
        tensor = _scale(tensor, value_range)
    if pad_to is not None:
        tensor = _pad(tensor, pad_to, value_range[0] if value_range is not None else 0)
    if channels is not None:
        tensor = _convert_channels(tensor, channels)
    return tensor.contiguous()


def psnr(mse: float | torch.Tensor, data_range: float = 1.0) -> float | torch.Tensor:
    """Peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / mse)``, of a mean squared error
    (a float, or a tensor elementwise); ``inf`` where ``mse`` is 0 (clamp it first for a ceiling).
    ``data_range``: the span of the pixel values (1 for ``[0, 1]``, 2 for ``[-1, 1]``)."""
    if isinstance(mse, torch.Tensor):
        return 10 * torch.log10(data_range**2 / mse)
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def is_pil_image(value: Any) -> bool:
    """Whether ``value`` is a PIL image (without importing PIL for callers that never pass one)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(value, Image.Image)


# --------------------------------------------------------------------------------------------
# Helpers


def _as_nchw(images: Any, torch_channels_last: bool, allow_float: bool) -> torch.Tensor:
    """Any supported image collection as an ``[n, C, H, W]`` tensor of its own dtype (a view where
    possible: the layout, and so the float arithmetic that follows, is that of the input)."""
    if is_pil_image(images):
        images = [images]
    if isinstance(images, Sequence) and not isinstance(images, (str, bytes)):
        if not len(images):
            return torch.zeros((0, 1, 1, 1), dtype=torch.uint8)
        arrays = [_pil_pixels(image) if is_pil_image(image) else np.asarray(image) for image in images]
        if len({a.shape for a in arrays}) > 1:
            raise DataError(
                f"the images have different shapes ({sorted({a.shape for a in arrays})[:3]}); "
                "convert them to one mode and size first"
            )
        images = np.stack(arrays)
    elif not isinstance(images, (np.ndarray, torch.Tensor)) and hasattr(images, "__array__"):
        images = np.asarray(images)
    if isinstance(images, torch.Tensor):
        tensor = images.detach().cpu()
        if tensor.dtype != torch.uint8 and not (allow_float and tensor.is_floating_point()):
            raise _dtype_error(tensor.dtype, tensor.shape, allow_float)
        channels_last = torch_channels_last
    elif isinstance(images, np.ndarray):
        array = images
        if array.dtype != np.uint8 and not (allow_float and np.issubdtype(array.dtype, np.floating)):
            raise _dtype_error(array.dtype, array.shape, allow_float)
        if array.dtype == np.float64:
            array = array.astype(np.float32)
        with warnings.catch_warnings():  # read-only arrays (memory maps) are fine: the pixels are only read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.from_numpy(np.ascontiguousarray(array))
        channels_last = True
    else:
        raise DataError(f"images must be PIL images, a numpy array or a torch tensor, got {type(images).__name__}")
    if tensor.ndim == 3:
        return tensor.unsqueeze(1)
    if tensor.ndim != 4:
        layouts = "[n, H, W] or [n, H, W, C]" if torch_channels_last else "[n, H, W], [n, H, W, C] (numpy) or [n, C, H, W] (torch)"
        raise DataError(f"images must be {layouts}, got shape {list(tensor.shape)}")
    return tensor.permute(0, 3, 1, 2) if channels_last else tensor


def _dtype_error(dtype: Any, shape: Sequence[int], allow_float: bool) -> DataError:
    if allow_float:
        return DataError(f"images must be uint8 or float, got {dtype} {list(shape)}")
    return DataError(f"images must be uint8, got {dtype} {list(shape)}; scale them to [0, 255] and cast to uint8")


def _pil_pixels(image: Any) -> np.ndarray:
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise DataError(f"expected an 8-bit image, got PIL mode {image.mode!r}; convert it first, e.g. image.convert('RGB')")
    return array


def _scale(tensor: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    """uint8 ``[0, 255]`` or float ``[0, 1]`` -> float32 ``[low, high]``."""
    low, high = value_range
    if not high > low:
        raise DataError(f"value_range must be (low, high) with low < high, got {value_range!r}")
    if tensor.dtype == torch.uint8:
        tensor = tensor.float().div(255)
    else:
        tensor = tensor.float()
        if tensor.numel():
            lowest, highest = float(tensor.min()), float(tensor.max())
            if not (math.isfinite(lowest) and math.isfinite(highest)) or lowest < -_RANGE_TOLERANCE or highest > 1 + _RANGE_TOLERANCE:
                raise DataError(
                    f"float images must lie in [0, 1], got values in [{lowest:.3g}, {highest:.3g}]; "
                    "map [-1, 1] images with (x + 1) / 2, pass uint8 for [0, 255]"
                )
        tensor = tensor.clamp(0.0, 1.0)
    if (low, high) != (0.0, 1.0):
        tensor = tensor.mul(high - low).add_(low)  # one rounding, as x / 127.5 - 1 and (x / 255 - 0.5) / 0.5
    return tensor


def _pad(tensor: torch.Tensor, size: int, background: float) -> torch.Tensor:
    height, width = tensor.shape[2:]
    if height > size or width > size:
        raise DataError(
            f"images of {height}x{width} do not fit a {size}x{size} canvas; resize or crop them first, or pad to a larger size"
        )
    top, left = (size - height) // 2, (size - width) // 2
    canvas = torch.full((tensor.shape[0], tensor.shape[1], size, size), background, dtype=tensor.dtype)
    canvas[:, :, top : top + height, left : left + width] = tensor
    return canvas


def _convert_channels(tensor: torch.Tensor, channels: int) -> torch.Tensor:
    have = tensor.shape[1]
    if have == channels:
        return tensor
    if have == 4:  # drop alpha
        tensor, have = tensor[:, :3], 3
        if have == channels:
            return tensor
    if have == 1:
        return tensor.expand(-1, channels, -1, -1)
    if have == 3 and channels == 1:
        if not tensor.is_floating_point():
            raise DataError("RGB to luma needs a value_range (float values)")
        return (tensor * torch.tensor(LUMA_WEIGHTS).view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    if have != 3:
        raise DataError(f"images must have 1, 3 or 4 channels, got {have} (shape {list(tensor.shape)})")
    raise DataError(f"cannot turn {have}-channel images into {channels} channels")
