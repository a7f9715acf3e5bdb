"""The cluster gallery on the tiny paired-codebook VQ (4x4 token grid, downsample 4)."""

import numpy as np
import PIL.Image
import pytest
import torch

from masc_hf import build_cluster_map
from masc_hf.errors import ClusterMapMismatchError
from masc_hf.evaluation.gallery import cluster_gallery, token_tiles
from masc_hf.vq.tokens import decode_ids


def test_a_tile_is_the_centre_of_a_grid_filled_with_the_token(paired_vq):
    (tile,) = token_tiles(paired_vq, [5], crop_tokens=2)
    assert tile.size == (8, 8) and tile.mode == "RGB"  # 2 tokens x 4 pixels
    pixels = decode_ids(paired_vq, torch.full((1, 4, 4), 5)).clamp(-1, 1)[0, :, 4:12, 4:12]
    expected = ((pixels + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(tile), expected)
    # a crop wider than the latent grid is the whole decoded grid
    assert token_tiles(paired_vq, [5, 6], crop_tokens=9)[1].size == (16, 16)


def test_gallery_layout_tiles_and_empty_slots(paired_vq, paired_maps, tmp_path):
    cmap = paired_maps["pairs"]  # 8 clusters of 2 members
    path = tmp_path / "gallery.png"
    grid = cluster_gallery(paired_vq, cmap, num_clusters=3, members_per_cluster=4, tile_size=20, crop_tokens=2, path=path)
    cell = 20 + 2  # a one-pixel white frame around each tile
    label_width = grid.width - 4 * cell
    assert grid.height == 3 * cell and 0 < label_width < 200
    with PIL.Image.open(path) as saved:
        assert saved.size == grid.size
        np.testing.assert_array_equal(np.asarray(saved.convert("RGB")), np.asarray(grid))
    assert [p.name for p in tmp_path.iterdir()] == ["gallery.png"]  # no temporary file left
    pixels = np.asarray(grid)

    def tile(row, col):
        top, left = row * cell + 1, label_width + col * cell + 1
        return pixels[top : top + 20, left : left + 20]

    # each row shows both members of one cluster, then two light-gray empty slots
    tiles = {t: np.asarray(im.resize((20, 20), PIL.Image.NEAREST)) for t, im in enumerate(token_tiles(paired_vq, range(16), crop_tokens=2))}
    for row in range(3):
        members = [t for t, image in tiles.items() if np.array_equal(image, tile(row, 0))]
        assert members and members[0] % 2 == 0 and np.array_equal(tile(row, 1), tiles[members[0] + 1])
        assert (tile(row, 2) == 235).all() and (tile(row, 3) == 235).all()
    # the same seed draws the same clusters
    again = cluster_gallery(paired_vq, cmap, num_clusters=3, members_per_cluster=4, tile_size=20, crop_tokens=2)
    np.testing.assert_array_equal(np.asarray(again), pixels)


def test_gallery_samples_members_of_large_clusters_and_skips_singletons(paired_vq, paired_maps):
    from masc_hf.vq import export_codebook

    coarse = build_cluster_map(export_codebook(paired_vq), 2, compute_quality=False)  # clusters of several pairs
    grid = cluster_gallery(paired_vq, coarse, num_clusters=5, members_per_cluster=3, tile_size=8)
    assert grid.height == 2 * 10 and not (np.asarray(grid)[:, -3 * 10 :] == 235).all(axis=2).any()
    # k = N: every cluster is a singleton; they are shown when nothing else exists
    grid = cluster_gallery(paired_vq, paired_maps["singletons"], num_clusters=4, members_per_cluster=2, tile_size=8)
    assert grid.height == 4 * 10


def test_gallery_refuses_a_map_of_another_codebook(paired_vq):
    foreign = build_cluster_map(np.random.default_rng(5).normal(size=(16, 4)), 8, compute_quality=False)
    with pytest.raises(ClusterMapMismatchError, match="build the map from this tokenizer's codebook"):
        cluster_gallery(paired_vq, foreign)


def test_gallery_cli(paired_vq, paired_maps, tmp_path, capsys):
    from masc_hf.cli import main

    paired_vq.save_pretrained(tmp_path / "vq")
    paired_maps["pairs"].save_pretrained(tmp_path / "map")
    out = tmp_path / "g.png"
    argv = ["gallery", "--vq", str(tmp_path / "vq"), "--map", str(tmp_path / "map"), "--out", str(out), "--clusters", "2",
            "--members", "3", "--tile-size", "16", "--device", "cpu"]
    assert main(argv) == 0
    with PIL.Image.open(out) as image:
        assert image.height == 2 * 18
    assert "2 clusters of masc map k=8" in capsys.readouterr().out
