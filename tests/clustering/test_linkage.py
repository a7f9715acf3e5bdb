"""The MASC tree against scipy (tie-free inputs) and against a brute-force oracle of the tie rule."""

import itertools

import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import pdist

from masc_hf.clustering import average_linkage, canonical_labels, cut_linkage


def same_partition(a, b) -> bool:
    return np.array_equal(canonical_labels(a), canonical_labels(b))


@pytest.mark.parametrize(
    "n,d,ks",
    [(16, 8, (1, 2, 5, 15, 16)), (200, 32, (3, 50, 199)), (1000, 8, (10, 500, 900)), (4096, 8, (64, 2048, 4000)), (2048, 32, (8, 1024))],
)
def test_partition_equals_scipy_on_tie_free_codebooks(n, d, ks):
    codebook = np.random.default_rng(n + d).standard_normal((n, d))
    tree = average_linkage(codebook)
    reference = linkage(pdist(codebook), "average")
    # Same merges in the same order (cluster numbers and sizes exactly; heights to rounding).
    np.testing.assert_array_equal(tree[:, [0, 1, 3]], reference[:, [0, 1, 3]])
    np.testing.assert_allclose(tree[:, 2], reference[:, 2], rtol=1e-12, atol=0)
    for k in ks:
        ours = cut_linkage(tree, k)
        assert ours.max() + 1 == k
        assert same_partition(ours, fcluster(reference, k, "maxclust"))


def brute_force_upgma(points: np.ndarray) -> np.ndarray:
    """Algorithm 1 spelled out with explicit cluster sets and Eq. 3 recomputed from scratch each
    step; ties go to the lexicographically smallest (min token id) pair. Slow: O(N^4)."""
    n = len(points)
    dist = np.sqrt(((points[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    clusters = {i: ([i], i) for i in range(n)}  # name (smallest id) -> (members, scipy number)
    out = []
    for step in range(n - 1):
        best = None
        for a, b in itertools.combinations(sorted(clusters), 2):
            ma, mb = clusters[a][0], clusters[b][0]
            value = dist[np.ix_(ma, mb)].mean()
            if best is None or value < best[0] - 1e-9:
                best = (value, a, b)
        value, a, b = best
        (ma, na), (mb, nb) = clusters[a], clusters[b]
        out.append((min(na, nb), max(na, nb), value, len(ma) + len(mb)))
        clusters[a] = (sorted(ma + mb), n + step)
        del clusters[b]
    return np.array(out)


@pytest.mark.parametrize("seed", range(6))
def test_tie_rule_matches_brute_force_oracle(seed):
    rng = np.random.default_rng(seed)
    # Points on a small integer grid with duplicates: many exactly equal distances.
    points = rng.integers(0, 3, size=(int(rng.integers(6, 24)), 2)).astype(float)
    ours = average_linkage(points)
    oracle = brute_force_upgma(points)
    np.testing.assert_array_equal(ours[:, [0, 1, 3]], oracle[:, [0, 1, 3]])
    np.testing.assert_allclose(ours[:, 2], oracle[:, 2], atol=1e-9)


def test_duplicates_merge_first_in_name_order():
    points = np.array([[0.0], [5.0], [0.0], [5.0], [9.0]])
    tree = average_linkage(points)
    # Two zero-distance pairs: (0, 2) is lexicographically before (1, 3).
    assert tree[0].tolist() == [0, 2, 0.0, 2]
    assert tree[1].tolist() == [1, 3, 0.0, 2]


def test_tree_is_byte_identical_across_runs():
    points = np.random.default_rng(3).integers(0, 4, size=(300, 3)).astype(np.float32)
    first = average_linkage(points)
    assert all(average_linkage(points).tobytes() == first.tobytes() for _ in range(2))


def test_heights_are_monotone_and_last_merge_is_root():
    points = np.random.default_rng(5).standard_normal((500, 8))
    tree = average_linkage(points)
    assert (np.diff(tree[:, 2]) >= -1e-12).all()
    assert tree[-1, 3] == 500
