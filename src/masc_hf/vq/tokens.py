"""Images <-> token ids through a diffusers ``VQModel``'s own ``encode``/``quantize``/``decode``.

Token ids are flat per image, ``[B, h*w]``, row-major over the latent grid (LlamaGen's order).
For a converted LlamaGen tokenizer no special quantizer is needed: the codebook rows are unit
length, so diffusers' nearest-row search returns LlamaGen's indices (see ``convert_vq``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..errors import MASCError
from .codebook import export_codebook  # noqa: F401  (re-exported: the codebook of a VQModel)

if TYPE_CHECKING:  # pragma: no cover
    from diffusers import VQModel


def downsample_factor(vqmodel: VQModel) -> int:
    """Image pixels per token along each side (16 for LlamaGen VQ-16)."""
    return 2 ** (len(vqmodel.config.block_out_channels) - 1)


@torch.no_grad()
def encode_images(vqmodel: VQModel, images: torch.Tensor) -> torch.LongTensor:
    """Token ids of images.

    Args:
        vqmodel: a diffusers ``VQModel`` (eval mode).
        images: ``[B, C, H, W]`` in ``[-1, 1]``; H and W multiples of the downsample factor.

    Returns:
        ``[B, h*w]`` int64 on the model's device, ``h = H // f``, ``w = W // f``.
    """
    factor = downsample_factor(vqmodel)
    channels = vqmodel.config.in_channels
    if images.ndim != 4 or images.shape[1] != channels or images.shape[2] % factor or images.shape[3] % factor:
        raise MASCError(
            f"images must be [B, {channels}, H, W] with H and W multiples of {factor}, got {list(images.shape)}; "
            "resize or crop them first"
        )
    weight = vqmodel.quant_conv.weight
    latents = vqmodel.encode(images.to(device=weight.device, dtype=weight.dtype)).latents
    _, _, (_, _, ids) = vqmodel.quantize(latents)
    return ids.reshape(latents.shape[0], -1)


@torch.no_grad()
def decode_ids(vqmodel: VQModel, ids: torch.Tensor, grid_size: tuple[int, int] | int | None = None) -> torch.Tensor:
    """Images of token ids (LlamaGen's ``decode_code``).

    Args:
        vqmodel: a diffusers ``VQModel`` (eval mode).
        ids: ``[B, h*w]`` (row-major) or ``[B, h, w]`` integer ids in ``[0, num_vq_embeddings)``.
        grid_size: ``(h, w)`` or ``h`` for a square grid; default: from ``ids`` (``[B, h, w]``),
            else the square grid ``h = w = sqrt(h*w)``.

    Returns:
        ``[B, C, h*f, w*f]`` in the model's dtype, not clamped (the decoder's raw output,
        nominally in ``[-1, 1]``).
    """
    batch, height, width = _grid(ids, grid_size)
    num_embeddings = vqmodel.config.num_vq_embeddings
    if ids.dtype.is_floating_point or ids.dtype == torch.bool:
        raise MASCError(f"token ids must be an integer tensor, got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_embeddings):
        raise MASCError(
            f"token ids must lie in [0, {num_embeddings}) for this VQ codebook, got values in [{int(ids.min())}, {int(ids.max())}]; "
            "were they produced for another tokenizer?"
        )
    embed_dim = vqmodel.config.vq_embed_dim or vqmodel.config.latent_channels
    shape = (batch, height, width, embed_dim)
    flat = ids.reshape(-1).to(device=vqmodel.quant_conv.weight.device, dtype=torch.long)
    if vqmodel.config.lookup_from_codebook:
        return vqmodel.decode(flat, force_not_quantize=True, shape=shape).sample
    quant = vqmodel.quantize.get_codebook_entry(flat, shape)
    return vqmodel.decode(quant, force_not_quantize=True).sample


def _grid(ids: torch.Tensor, grid_size: tuple[int, int] | int | None) -> tuple[int, int, int]:
    if ids.ndim == 3:
        batch, height, width = ids.shape
        if grid_size is not None and _as_pair(grid_size) != (height, width):
            raise MASCError(f"grid_size {grid_size} contradicts ids of shape {list(ids.shape)}; drop grid_size")
        return batch, height, width
    if ids.ndim != 2:
        raise MASCError(f"token ids must be [B, h*w] or [B, h, w], got shape {list(ids.shape)}")
    batch, length = ids.shape
    if grid_size is None:
        side = math.isqrt(length)
        if side * side != length:
            raise MASCError(f"{length} tokens per image do not form a square grid; pass grid_size=(h, w)")
        return batch, side, side
    height, width = _as_pair(grid_size)
    if height * width != length:
        raise MASCError(f"grid_size {height}x{width} does not hold {length} tokens per image")
    return batch, height, width


def _as_pair(grid_size: tuple[int, int] | int) -> tuple[int, int]:
    return (grid_size, grid_size) if isinstance(grid_size, int) else (int(grid_size[0]), int(grid_size[1]))
