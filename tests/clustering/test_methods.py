import numpy as np
import pytest
from scipy.cluster.hierarchy import fcluster, linkage
from sklearn.cluster import KMeans

import masc_hf
from masc_hf.clustering import CLUSTER_METHODS, canonical_labels, cut_linkage
from masc_hf.errors import MASCError


@pytest.fixture(scope="module")
def codebook():
    return np.random.default_rng(0).standard_normal((240, 8))


@pytest.mark.parametrize("method", list(CLUSTER_METHODS))
def test_every_method_gives_k_canonical_clusters(codebook, method):
    cmap = masc_hf.build_cluster_map(codebook, 24, method=method, seed=1, compute_quality=False)
    assert cmap.num_clusters == 24 and cmap.num_tokens == 240
    assert np.array_equal(cmap.mapping, canonical_labels(cmap.mapping))
    assert cmap.mapping[0] == 0
    # same input, same map
    again = masc_hf.build_cluster_map(codebook, 24, method=method, seed=1, compute_quality=False)
    assert np.array_equal(cmap.mapping, again.mapping)


@pytest.mark.parametrize("method", ["single", "complete", "ward"])
def test_scipy_linkage_baselines_match_fcluster(codebook, method):
    cmap = masc_hf.build_cluster_map(codebook, 30, method=method, compute_quality=False)
    reference = fcluster(linkage(codebook, method), 30, "maxclust")
    assert np.array_equal(cmap.mapping, canonical_labels(reference))


def test_centroid_is_scipy_centroid_tree(codebook):
    cmap = masc_hf.build_cluster_map(codebook, 30, method="centroid", compute_quality=False)
    reference = linkage(codebook, "centroid")
    np.testing.assert_array_equal(cmap.tree, reference)
    assert np.array_equal(cmap.mapping, cut_linkage(reference, 30))


@pytest.mark.parametrize("method,init", [("kmeans", "random"), ("kmeans++", "k-means++")])
def test_kmeans_uses_the_papers_settings(codebook, method, init):
    cmap = masc_hf.build_cluster_map(codebook, 20, method=method, seed=7, compute_quality=False)
    reference = KMeans(20, init=init, n_init=10, max_iter=300, tol=1e-4, random_state=7).fit_predict(codebook)
    assert np.array_equal(cmap.mapping, canonical_labels(reference))


def test_balanced_kmeans_sizes_are_exact(codebook):
    cmap = masc_hf.build_cluster_map(codebook, 40, method="balanced-kmeans", compute_quality=False)
    assert (cmap.cluster_sizes == 6).all()
    with pytest.raises(MASCError, match="divisible"):
        masc_hf.build_cluster_map(codebook, 41, method="balanced-kmeans")


def test_balanced_kmeans_beats_random_balanced_assignment(codebook):
    from masc_hf.clustering import cluster_quality

    balanced = masc_hf.build_cluster_map(codebook, 40, method="balanced-kmeans", compute_quality=False)
    rng = np.random.default_rng(0)
    random_balanced = rng.permutation(np.repeat(np.arange(40), 6))
    ours = cluster_quality(codebook, balanced)["mean_intra_cluster_distance"]
    chance = cluster_quality(codebook, canonical_labels(random_balanced))["mean_intra_cluster_distance"]
    assert ours < 0.8 * chance


def test_random_partition_depends_on_seed(codebook):
    a = masc_hf.build_cluster_map(codebook, 24, method="random", seed=0, compute_quality=False)
    b = masc_hf.build_cluster_map(codebook, 24, method="random", seed=1, compute_quality=False)
    assert not np.array_equal(a.mapping, b.mapping)


def test_unknown_method_is_named(codebook):
    with pytest.raises(MASCError, match="unknown clustering method 'agglo'.*masc"):
        masc_hf.build_cluster_map(codebook, 4, method="agglo")
