"""The dense engine: scipy's partitions on random and clustered codebooks, one tree on every run,
duplicates and ties, the torch engine (on the CPU) against the numpy one, and engine selection."""

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

import masc_hf
from masc_hf.clustering import LINKAGE_ENGINES, average_linkage, canonical_labels, cut_linkage
from masc_hf.clustering.dense import leaf_distances
from masc_hf.clustering.linkage import _linkage_matrix
from masc_hf.errors import MASCError


def blobs(n, d, centres, spread, seed):
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, d)) * 4
    return middle[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d))


def assert_scipy_partitions(points, ks):
    tree = average_linkage(points)
    reference = linkage(pdist(points), "average")
    np.testing.assert_array_equal(tree[:, [0, 1, 3]], reference[:, [0, 1, 3]])
    np.testing.assert_allclose(tree[:, 2], reference[:, 2], rtol=1e-12, atol=0)
    for k in ks:
        assert np.array_equal(cut_linkage(tree, k), canonical_labels(fcluster(reference, k, "maxclust")))


@pytest.mark.parametrize(
    "n,d,centres,spread,ks",
    [(500, 8, 20, 0.3, (20, 250)), (3000, 8, 64, 0.5, (64, 1500, 2900)), (1500, 16, 8, 1.0, (8, 700)), (800, 2, 5, 0.05, (5, 400))],
)
def test_clustered_codebooks_give_scipys_tree(n, d, centres, spread, ks):
    assert_scipy_partitions(blobs(n, d, centres, spread, seed=n + d), ks)


def test_codebook_far_from_the_origin_gives_scipys_tree():
    points = np.random.default_rng(7).standard_normal((600, 8)) * 1e-3 + 50.0
    assert_scipy_partitions(points, (10, 300))


def test_near_duplicates_are_measured_exactly():
    rng = np.random.default_rng(3)
    base = rng.standard_normal((40, 8))
    points = np.concatenate([base, base + 1e-9 * rng.standard_normal((40, 8))])
    assert_scipy_partitions(points, (40, 60))


def test_same_tree_bytes_on_every_run():
    for points in (blobs(1200, 8, 30, 0.4, seed=1), np.random.default_rng(2).integers(0, 5, (900, 3)).astype(float)):
        first = average_linkage(points)
        assert all(average_linkage(points).tobytes() == first.tobytes() for _ in range(2))


def test_identical_rows_merge_first_group_by_group():
    points = np.array([[3.0], [1.0], [3.0], [1.0], [7.0], [3.0], [1.0]])
    tree = average_linkage(points)
    # groups {0, 2, 5} and {1, 3, 6}: (0, 2), (0+2, 5) before (1, 3), (1+3, 6), all at height 0
    assert tree[:4].tolist() == [[0, 2, 0, 2], [5, 7, 0, 3], [1, 3, 0, 2], [6, 9, 0, 3]]
    assert tree[-1, 3] == 7 and (np.diff(tree[:, 2]) >= 0).all()


def test_all_rows_identical():
    tree = average_linkage(np.ones((5, 3)))
    assert tree.tolist() == [[0, 1, 0, 2], [2, 5, 0, 3], [3, 6, 0, 4], [4, 7, 0, 5]]


def test_equal_distances_resolve_by_names():
    # unit vectors: all pairwise distances are sqrt(2), so every choice is a tie
    points = np.concatenate([np.eye(6), [[9.0] * 6]])
    tree = average_linkage(points)
    assert tree[:5, :2].tolist() == [[0, 1], [2, 7], [3, 8], [4, 9], [5, 10]]
    assert (tree[:5, 2] == np.sqrt(2)).all()


def test_points_on_a_line_merge_left_to_right():
    # equal gaps: each merge makes the next pair the closest one; one merge per round
    points = np.arange(12, dtype=float)[:, None]
    tree = average_linkage(points)
    assert tree[0].tolist() == [0, 1, 1, 2] and tree[1].tolist() == [2, 3, 1, 2]


def test_merges_are_placed_after_their_children():
    # a parent whose height rounds below its child's still comes after it
    merges = np.array([[2, 3, 1.0, 2, 0], [0, 2, 1.0 - 2**-52, 3, 1], [0, 1, 2.0, 4, 2]])
    tree = _linkage_matrix(merges, 4)
    assert tree[:, :2].tolist() == [[2, 3], [0, 4], [1, 5]]


def test_leaf_distances_are_symmetric_and_cdists():
    from scipy.spatial.distance import cdist

    points = blobs(700, 8, 10, 0.2, seed=5)
    out = np.empty((700, 700))
    leaf_distances(points, out, block=256)
    assert np.array_equal(out, out.T)
    np.fill_diagonal(out, 0.0)
    assert np.array_equal(out, cdist(points, points))


def test_torch_engine_on_cpu_equals_numpy_engine():
    pytest.importorskip("torch")
    grid = np.random.default_rng(5).integers(0, 4, (500, 3)).astype(float)
    for points in (blobs(400, 8, 12, 0.3, seed=11), np.random.default_rng(4).standard_normal((300, 5)), grid):
        # the same leaf distances and the same arithmetic in the same order: the same bytes
        assert average_linkage(points, engine="torch", device="cpu").tobytes() == average_linkage(points).tobytes()


def test_torch_distances_sum_like_cdist():
    # the formula the torch engine uses on a GPU; on the CPU it takes cdist's values instead
    torch = pytest.importorskip("torch")
    from masc_hf.clustering.dense_torch import squared_distances

    points = blobs(300, 8, 10, 0.5, seed=9)
    ours = squared_distances(torch.from_numpy(points), block=128).numpy()
    reference = np.zeros((300, 300))
    for k in range(points.shape[1]):
        diff = points[:, k, None] - points[None, :, k]
        reference += diff * diff
    assert np.array_equal(ours, reference)
    assert np.array_equal(np.sqrt(reference), cdist_of(points))


def cdist_of(points):
    from scipy.spatial.distance import cdist

    return cdist(points, points)


def test_build_cluster_map_with_the_torch_engine():
    pytest.importorskip("torch")
    codebook = blobs(300, 8, 10, 0.5, seed=2)
    ours = masc_hf.build_cluster_map(codebook, 40, compute_quality=False)
    theirs = masc_hf.build_cluster_map(codebook, 40, compute_quality=False, engine="torch", device="cpu")
    assert np.array_equal(ours.mapping, theirs.mapping)


def test_engine_choice_is_checked():
    codebook = np.random.default_rng(0).standard_normal((30, 4))
    assert {"numpy", "torch"} <= set(LINKAGE_ENGINES)
    with pytest.raises(MASCError, match="unknown linkage engine 'gpu'.*numpy"):
        average_linkage(codebook, engine="gpu")
    with pytest.raises(MASCError, match="numpy engine runs on the CPU"):
        masc_hf.build_cluster_map(codebook, 5, engine="numpy", device="cuda")
    with pytest.raises(MASCError, match="method 'kmeans' takes neither"):
        masc_hf.build_cluster_map(codebook, 5, method="kmeans", engine="torch")
