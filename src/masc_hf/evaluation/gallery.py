"""A cluster gallery: what the members of a sample of clusters look like once decoded, one row per
cluster, so a person sees at a glance whether a cluster is coherent."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import MASCError

if TYPE_CHECKING:  # pragma: no cover
    import PIL.Image
    from diffusers import VQModel

    from ..clustering import MASCClusterMap

__all__ = ["cluster_gallery", "token_tiles"]

_BLANK = 235  # light gray: the tile of an empty slot (a cluster with fewer members than columns)
_GAP = 1  # white pixels around each tile


def cluster_gallery(
    vqvae: VQModel,
    cluster_map: MASCClusterMap,
    *,
    num_clusters: int = 16,
    members_per_cluster: int = 8,
    seed: int = 0,
    path: str | os.PathLike | None = None,
    tile_size: int = 64,
    crop_tokens: int = 4,
    batch_size: int = 64,
) -> PIL.Image.Image:
    """One row per sampled cluster (labelled ``"cluster c (n members)"``), one tile per member token.

    Each tile is the decoder's picture of one token alone: a token grid filled entirely with that
    token is decoded and the centre ``crop_tokens x crop_tokens`` tokens are cut out (see
    :func:`token_tiles`). Filling the grid shows the token's own colour and texture with no
    neighbour bleeding in (a token in a real image is coloured by its neighbours through the
    decoder's receptive field), and cropping the centre drops the border, where the decoder's zero
    padding shows. Tiles are scaled to ``tile_size`` pixels with nearest-neighbour resampling, so
    every decoded pixel stays visible, and framed by one white pixel.

    Clusters are drawn at random (``seed``) among those with at least two members (singletons say
    nothing about coherence; they are drawn only when too few larger clusters exist), and shown in
    ascending id order. A cluster with more members than ``members_per_cluster`` shows a random
    sample of them (ascending); a smaller one leaves light gray slots.

    Args:
        vqvae: the diffusers ``VQModel`` the map was built from (checked: N and codebook fingerprint).
        cluster_map: the map to show.
        num_clusters: rows (at most the number of clusters).
        members_per_cluster: tiles per row.
        seed: seed of the cluster and member draws.
        path: also write the picture there (atomically; format from the suffix, e.g. ``.png``).
        tile_size: tile side in pixels.
        crop_tokens: side, in tokens, of the decoded patch each tile shows (at most the latent grid).
        batch_size: token grids per decoder call.

    Returns:
        The gallery as a PIL RGB image: ``num_clusters * (tile_size + 2)`` pixels high and
        ``label column + members_per_cluster * (tile_size + 2)`` wide.
    """
    from ..pipelines.grid import make_image_grid, save_image_grid
    from .replacement import check_maps_against_tokenizer

    check_maps_against_tokenizer(vqvae, {f"{getattr(cluster_map, 'method', '?')} (k={getattr(cluster_map, 'num_clusters', '?')})": cluster_map})
    for name, value in (("num_clusters", num_clusters), ("members_per_cluster", members_per_cluster), ("tile_size", tile_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MASCError(f"{name} must be a positive integer, got {value!r}")
    rng = np.random.default_rng(seed)
    sizes = cluster_map.cluster_sizes
    plural = np.flatnonzero(sizes >= 2)
    rows = min(num_clusters, cluster_map.num_clusters)
    if plural.size >= rows:
        clusters = np.sort(rng.choice(plural, size=rows, replace=False))
    else:  # too few clusters with 2+ members: all of them, then singletons
        singles = np.flatnonzero(sizes < 2)
        clusters = np.sort(np.concatenate([plural, rng.choice(singles, size=rows - plural.size, replace=False)]))

    slots: list[int | None] = []
    labels = []
    for cluster in clusters:
        members = cluster_map.members(int(cluster))
        if members.size > members_per_cluster:
            members = np.sort(rng.choice(members, size=members_per_cluster, replace=False))
        slots += [int(m) for m in members] + [None] * (members_per_cluster - members.size)
        labels.append(f"cluster {int(cluster)} ({int(sizes[cluster])} member{'s' if sizes[cluster] != 1 else ''})")

    tokens = sorted({t for t in slots if t is not None})
    tiles = dict(zip(tokens, token_tiles(vqvae, tokens, crop_tokens=crop_tokens, batch_size=batch_size)))
    import PIL.Image

    import PIL.ImageOps

    blank = PIL.Image.new("RGB", (tile_size, tile_size), (_BLANK, _BLANK, _BLANK))
    images = [blank if t is None else tiles[t].resize((tile_size, tile_size), resample=PIL.Image.NEAREST) for t in slots]
    images = [PIL.ImageOps.expand(image, border=_GAP, fill="white") for image in images]  # tiles of one shade stay apart
    grid = make_image_grid(images, rows=len(clusters), row_labels=labels)
    if path is not None:
        save_image_grid(images, rows=len(clusters), path=path, row_labels=labels)
    return grid


@torch.no_grad()
def token_tiles(vqvae: VQModel, tokens, *, crop_tokens: int = 4, batch_size: int = 64) -> list[PIL.Image.Image]:
    """The decoded look of each token id: a grid filled with the token, decoded, centre cropped.

    The grid is ``crop_tokens + 4`` tokens a side (two tokens of margin around the crop), at most
    the tokenizer's own latent grid; the tile is its centre ``crop_tokens`` tokens,
    ``crop_tokens * f`` pixels a side (``f`` the downsample factor). Returns RGB PIL images.
    """
    import PIL.Image

    from ..vq.tokens import decode_ids, downsample_factor

    factor = downsample_factor(vqvae)
    latent_side = max(1, vqvae.config.sample_size // factor)
    if isinstance(crop_tokens, bool) or not isinstance(crop_tokens, int) or crop_tokens < 1:
        raise MASCError(f"crop_tokens must be a positive integer, got {crop_tokens!r}")
    side = min(latent_side, crop_tokens + 4)
    crop = min(crop_tokens, side)
    start = (side - crop) // 2 * factor
    ids = torch.as_tensor(np.asarray(tokens, dtype=np.int64)).reshape(-1)
    was_training = vqvae.training
    vqvae.eval()
    tiles = []
    try:
        for begin in range(0, ids.numel(), batch_size):
            chunk = ids[begin : begin + batch_size]
            grids = chunk[:, None, None].expand(-1, side, side)
            pixels = decode_ids(vqvae, grids).float().cpu().clamp(-1, 1)
            pixels = pixels[:, :, start : start + crop * factor, start : start + crop * factor]
            array = ((pixels + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            for image in array:
                tiles.append(PIL.Image.fromarray(image[:, :, 0] if image.shape[2] == 1 else image).convert("RGB"))
    finally:
        vqvae.train(was_training)
    return tiles
