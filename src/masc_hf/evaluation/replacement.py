"""The semantic replacement test (the official MASC code's diagnostic): how much does an image change
when every token is swapped for a random member of its cluster? PSNR/SSIM (and rFID) against the
plain reconstruction, per map. Design notes (the procedure, its conventions): docs/evaluation.md.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from ..data.pixels import psnr
from ..errors import DataError, MASCError
from ..data.pixels import is_pil_image

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import VQModel

    from ..clustering import MASCClusterMap

logger = logging.getLogger(__name__)

__all__ = [
    "PLAIN",
    "check_maps_against_tokenizer",
    "format_replacement_table",
    "images_as_array",
    "replacement_test",
    "structural_similarity",
]

PLAIN = "plain"  # the name of the reference row: plain reconstruction vs original
SSIM_WINDOW = 7  # skimage's default window (uniform 7x7, sample covariance)


def check_maps_against_tokenizer(vqvae: VQModel, cluster_maps: Mapping[str, MASCClusterMap]) -> None:
    """Raise :class:`ClusterMapMismatchError` naming the first map that was not built from
    ``vqvae``'s codebook (size N and codebook fingerprint). Cheap: call it before any long work."""
    from ..pipelines.pairing import check_maps_fit_tokenizer

    if isinstance(cluster_maps, Mapping) and PLAIN in cluster_maps:
        raise MASCError(f"{PLAIN!r} names the reference row (plain reconstruction); give that map another name")
    check_maps_fit_tokenizer(vqvae, cluster_maps)


def replacement_test(
    vqvae: VQModel,
    cluster_maps: Mapping[str, MASCClusterMap],
    images: Any,
    *,
    seed: int = 0,
    batch_size: int = 256,
    image_size: int | None = None,
    inception_weights: str | os.PathLike | None = None,
    progress: bool = True,
) -> dict[str, dict[str, Any]]:
    """Replace every token by a random member of its cluster and measure how much the image changes.

    Args:
        vqvae: the diffusers ``VQModel`` the maps were built from (its device is used).
        cluster_maps: ``{name: MASCClusterMap}``, e.g. ``{"masc": ..., "kmeans": ..., "random": ...}``.
            Each is checked against the tokenizer's codebook before any image is encoded.
        images: uint8 ``[N, H, W]`` / ``[N, H, W, C]`` (numpy or torch), a list of PIL images, or a
            dataset source (``.npy`` file, parquet file/directory, image folder, Hub id; see
            :func:`images_as_array`).
        seed: seed of the replacement draws.
        batch_size: images per encoder/decoder call.
        image_size: the tokenizer's input side (default ``vqvae.config.sample_size``); smaller images
            are padded to it.
        inception_weights: path of Inception weights for rFID (Fréchet Inception distance of the
            replaced images to the plain reconstructions, and of the plain reconstructions to the
            originals); ``None`` skips it.
        progress: show tqdm bars.

    Returns:
        ``{name: row}`` with the reference row ``"plain"`` first, then one row per map, each with
        ``method``, ``num_clusters``, ``changed_tokens`` (share of tokens whose replacement differs
        from the original id), ``psnr`` and ``ssim`` (against the plain reconstruction),
        ``psnr_vs_original`` and ``ssim_vs_original``, ``num_images``, and ``rfid`` when
        ``inception_weights`` is given. For ``"plain"``: ``psnr = inf``, ``ssim = 1`` (itself).

    Example::

        from masc_hf import MASCClusterMap
        from masc_hf.data import load_fashion_mnist, load_vqmodel
        from masc_hf.evaluation import format_replacement_table, replacement_test

        vqvae = load_vqmodel("runs/quickstart/vq")
        maps = {"masc": MASCClusterMap.from_pretrained("runs/quickstart/cluster_map")}
        results = replacement_test(vqvae, maps, load_fashion_mnist("test").images[:1000])
        print(format_replacement_table(results))
    """
    from ..vq.tokens import decode_ids, downsample_factor, encode_images
    from ..training.vq_trainer import to_vq_input

    check_maps_against_tokenizer(vqvae, cluster_maps)
    if inception_weights is not None:  # a missing weights file fails now, not after the decoding
        from .fidelity import resolve_inception_weights

        inception_weights = resolve_inception_weights(inception_weights)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise MASCError(f"batch_size must be a positive integer, got {batch_size!r}")
    image_size = int(image_size or vqvae.config.sample_size)
    factor = downsample_factor(vqvae)
    if image_size % factor:
        raise MASCError(f"image_size {image_size} is not a multiple of the tokenizer's downsample factor {factor}")
    channels = vqvae.config.in_channels
    array = images_as_array(images, image_size=image_size, channels=channels)
    count, height, width = array.shape[:3]
    if count == 0:
        raise DataError("no images given to the replacement test")
    if min(height, width) < SSIM_WINDOW:
        raise DataError(f"images of {height}x{width} are smaller than SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} window; use larger images")
    top, left = (image_size - height) // 2, (image_size - width) // 2

    def inputs(start: int) -> torch.Tensor:  # [B, C, S, S] in [-1, 1]
        return to_vq_input(array[start : start + batch_size], image_size=image_size, channels=channels)

    def region(pixels: torch.Tensor) -> torch.Tensor:  # [-1, 1] -> the original region in [0, 1], float64
        pixels = pixels.detach().to("cpu", torch.float64).clamp(-1, 1)[:, :, top : top + height, left : left + width]
        return (pixels + 1) / 2

    starts = range(0, count, batch_size)
    was_training = vqvae.training
    vqvae.eval()
    try:
        fine_ids = torch.cat(
            [encode_images(vqvae, inputs(s)).cpu() for s in tqdm(starts, desc="encode", disable=not progress)]
        )  # [N, L]
        # one uniform draw per token, shared by every map (common random numbers)
        replaced = {
            name: torch.from_numpy(cmap.decode(cmap.encode(fine_ids.numpy()), generator=np.random.default_rng(seed)))
            for name, cmap in cluster_maps.items()
        }
        names = [PLAIN, *cluster_maps]
        sums = {name: {"se_recon": 0.0, "se_original": 0.0, "ssim_recon": 0.0, "ssim_original": 0.0} for name in names}
        keep = {name: [] for name in names} if inception_weights is not None else None
        originals_kept = [] if keep is not None else None
        for s in tqdm(starts, desc="decode", disable=not progress):
            original = region(inputs(s))
            ids = fine_ids[s : s + batch_size]
            plain = region(decode_ids(vqvae, ids))
            outputs = {PLAIN: plain}
            for name in cluster_maps:
                new_ids = replaced[name][s : s + batch_size]
                changed = (new_ids != ids).any(dim=1)
                image = plain.clone()  # unchanged ids: the plain reconstruction itself, bit for bit
                if changed.any():
                    image[changed] = region(decode_ids(vqvae, new_ids[changed]))
                outputs[name] = image
            for name, image in outputs.items():
                acc = sums[name]
                acc["se_recon"] += float(((image - plain) ** 2).mean(dim=(1, 2, 3)).sum())
                acc["se_original"] += float(((image - original) ** 2).mean(dim=(1, 2, 3)).sum())
                acc["ssim_recon"] += float(structural_similarity(image, plain).sum())
                acc["ssim_original"] += float(structural_similarity(image, original).sum())
                if keep is not None:
                    keep[name].append(_to_uint8(image))
            if originals_kept is not None:
                originals_kept.append(_to_uint8(original))
    finally:
        vqvae.train(was_training)

    results: dict[str, dict[str, Any]] = {}
    for name in names:
        acc = sums[name]
        if name == PLAIN:
            row = {"method": None, "num_clusters": vqvae.config.num_vq_embeddings, "changed_tokens": 0.0}
        else:
            cmap = cluster_maps[name]
            row = {
                "method": cmap.method,
                "num_clusters": cmap.num_clusters,
                "changed_tokens": float((replaced[name] != fine_ids).double().mean()),
            }
        row.update(
            psnr=psnr(acc["se_recon"] / count),
            ssim=acc["ssim_recon"] / count,
            psnr_vs_original=psnr(acc["se_original"] / count),
            ssim_vs_original=acc["ssim_original"] / count,
            num_images=int(count),
        )
        results[name] = row
    if keep is not None:  # plain against the originals, every map against plain
        plain_u8, originals_u8 = np.concatenate(keep[PLAIN]), np.concatenate(originals_kept)
        for name in names:
            reference = originals_u8 if name == PLAIN else plain_u8
            results[name]["rfid"] = _rfid(np.concatenate(keep[name]), reference, inception_weights, progress)
    return results


def format_replacement_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A markdown table of :func:`replacement_test` results, one row per map (``plain`` first)."""
    has_rfid = any(row.get("rfid") is not None for row in results.values())
    header = ["map", "method", "k", "changed tokens", "PSNR vs recon (dB)", "SSIM vs recon", "PSNR vs original (dB)", "SSIM vs original"]
    if has_rfid:
        header.append("rFID")
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for name, row in results.items():
        cells = [
            "plain (reconstruction)" if name == PLAIN else name,
            row.get("method") or "-",
            str(row.get("num_clusters", "-")),
            f"{row['changed_tokens']:.1%}",
            _number(row["psnr"], 2),
            _number(row["ssim"], 4),
            _number(row["psnr_vs_original"], 2),
            _number(row["ssim_vs_original"], 4),
        ]
        if has_rfid:
            cells.append(_number(row.get("rfid"), 2))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def structural_similarity(x: torch.Tensor, y: torch.Tensor, *, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image pair, ``[B]``, for ``x, y`` ``[B, C, H, W]`` (the mean over channels).

    Equal to ``skimage.metrics.structural_similarity(a, b, data_range=data_range, channel_axis=-1)``
    with its defaults (7x7 uniform window, sample covariance, K1 = 0.01, K2 = 0.03, mean over the
    region at least 3 pixels from the border), batched in torch: skimage takes about 2 ms per 28x28
    RGB image and 36 ms per 256x256 one, which dominates a test of several maps on 1000s of images.
    """
    if x.shape != y.shape or x.ndim != 4:
        raise MASCError(f"SSIM needs two [B, C, H, W] batches of one shape, got {list(x.shape)} and {list(y.shape)}")
    if min(x.shape[-2:]) < SSIM_WINDOW:
        raise MASCError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels, got {x.shape[-2]}x{x.shape[-1]}")
    x, y = x.double(), y.double()
    batch, channels = x.shape[:2]

    def mean(t: torch.Tensor) -> torch.Tensor:  # the valid 7x7 means: skimage's filtered image with the border cropped
        return F.avg_pool2d(t.reshape(batch * channels, 1, *t.shape[-2:]), SSIM_WINDOW, stride=1)

    mx, my = mean(x), mean(y)
    cov_norm = SSIM_WINDOW**2 / (SSIM_WINDOW**2 - 1)
    vx = cov_norm * (mean(x * x) - mx * mx)
    vy = cov_norm * (mean(y * y) - my * my)
    vxy = cov_norm * (mean(x * y) - mx * my)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    ssim_map = (2 * mx * my + c1) * (2 * vxy + c2) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return ssim_map.reshape(batch, -1).mean(dim=1)


def images_as_array(
    images: Any, *, image_size: int, channels: int = 3, limit: int | None = None, split: str = "test"
) -> np.ndarray:
    """Images as one uint8 array ``[N, H, W]`` or ``[N, H, W, C]`` with ``H, W <= image_size``.

    ``images``: a uint8 array (numpy or torch, returned as is, up to ``limit``); a list of PIL
    images; or a path or Hub id: a ``.npy`` file of such an array, or a dataset source that
    :class:`~masc_hf.data.ImageStream` reads (parquet file/directory, image folder, Hub id;
    ``split``, first ``limit`` images). PIL images larger than ``image_size`` are centre-cropped to
    it (LlamaGen's ``center_crop``); all images must then share one size.
    """
    if isinstance(images, (str, os.PathLike)):
        source = str(images)
        if source.endswith(".npy"):
            if not Path(source).is_file():
                raise DataError(f"image array {source} does not exist")
            images = np.load(source, mmap_mode="r")
        else:
            from ..data.images import ImageStream

            stream = ImageStream(source, split=split, label_column=None, mode="L" if channels == 1 else "RGB")
            collected = []
            for image, _ in stream:
                if limit is not None and len(collected) >= limit:
                    break
                collected.append(image)
            images = collected
            if not images:
                raise DataError(f"{source} (split {split!r}) holds no readable images")
    if isinstance(images, Sequence) and images and all(is_pil_image(image) for image in images):
        from ..data.transforms import center_crop

        arrays = [np.asarray(center_crop(im, image_size) if max(im.size) > image_size else im) for im in images]
        if len({a.shape for a in arrays}) > 1:
            raise DataError(
                f"the images have different sizes or modes ({sorted({a.shape for a in arrays})[:3]}); "
                "convert them to one mode and size first"
            )
        images = np.stack(arrays)
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().numpy()
    array = np.asarray(images)
    if array.dtype != np.uint8 or array.ndim not in (3, 4) or (array.ndim == 4 and array.shape[3] not in (1, 3)):
        raise DataError(
            f"images must be uint8 [N, H, W] or [N, H, W, 1|3], PIL images or a dataset path, got {array.dtype} {list(array.shape)}"
        )
    if array.shape[1] > image_size or array.shape[2] > image_size:
        raise DataError(
            f"images of {array.shape[1]}x{array.shape[2]} do not fit the tokenizer's {image_size}x{image_size} input; "
            "centre-crop them (masc_hf.data.center_crop) or pass PIL images, which are cropped for you"
        )
    return np.ascontiguousarray(array[:limit] if limit is not None else array)


# ---------------------------------------------------------------------------------------- helpers
def _number(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def _to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``[B, C, H, W]`` in ``[0, 1]`` -> uint8 ``[B, H, W, 3]`` (gray replicated) for Inception."""
    array = (pixels * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return np.repeat(array, 3, axis=3) if array.shape[3] == 1 else array


def _rfid(samples: np.ndarray, reference: np.ndarray, inception_weights: str, progress: bool) -> float:
    """Fréchet Inception distance of uint8 ``[N, H, W, 3]`` images to others of the same size."""
    from .fidelity import calculate_metrics

    metrics = calculate_metrics(samples, reference, inception_weights=inception_weights, isc=False, prc=False, progress=progress)
    return float(metrics["frechet_inception_distance"])


