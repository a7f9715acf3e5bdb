import itertools

import numpy as np
import pytest
from sklearn.metrics import silhouette_samples

import masc_hf
from masc_hf.clustering import cluster_quality, sampled_silhouette
from masc_hf.errors import ClusterMapMismatchError


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(2)
    codebook = rng.standard_normal((90, 5))
    return codebook, masc_hf.build_cluster_map(codebook, 20, compute_quality=False)


def test_figures_against_naive_loops(data):
    codebook, cmap = data
    q = cluster_quality(codebook, cmap, sample_size=90)
    labels = cmap.mapping
    pairs = [np.linalg.norm(codebook[i] - codebook[j]) for i, j in itertools.combinations(range(90), 2) if labels[i] == labels[j]]
    replacement = np.mean(
        [np.mean([np.linalg.norm(codebook[i] - codebook[j]) for j in np.flatnonzero(labels == labels[i])]) for i in range(90)]
    )
    sizes = np.bincount(labels)
    assert q["mean_intra_cluster_distance"] == pytest.approx(np.mean(pairs), rel=1e-12)
    assert q["expected_replacement_distance"] == pytest.approx(replacement, rel=1e-12)
    assert (q["size_min"], q["size_max"], q["singletons"]) == (sizes.min(), sizes.max(), (sizes == 1).sum())
    assert q["size_median"] == np.median(sizes)
    # with the sample covering every token, the silhouette is scikit-learn's exactly
    assert q["silhouette"] == pytest.approx(silhouette_samples(codebook, labels).mean(), rel=1e-10)


def test_sampled_silhouette_scores_sample_against_full_partition(data):
    codebook, cmap = data
    full = silhouette_samples(codebook, cmap.mapping)
    sample = np.sort(np.random.default_rng(4).choice(90, size=30, replace=False))
    assert sampled_silhouette(codebook, cmap.mapping, sample_size=30, seed=4, block=7) == pytest.approx(full[sample].mean(), rel=1e-10)


def test_edge_cases():
    codebook = np.random.default_rng(0).standard_normal((10, 2))
    singletons = cluster_quality(codebook, np.arange(10))
    assert singletons["mean_intra_cluster_distance"] is None and singletons["expected_replacement_distance"] == 0
    assert singletons["silhouette"] == 0
    assert cluster_quality(codebook, np.zeros(10, dtype=int))["silhouette"] is None


def test_tighter_clusters_score_better():
    rng = np.random.default_rng(0)
    codebook = np.concatenate([rng.normal(c, 0.05, size=(20, 2)) for c in ((0, 0), (5, 5), (0, 5))])
    good = cluster_quality(codebook, np.repeat(np.arange(3), 20))
    bad = cluster_quality(codebook, np.tile(np.arange(3), 20))
    assert good["silhouette"] > 0.9 > bad["silhouette"]
    assert good["expected_replacement_distance"] < 0.1 * bad["expected_replacement_distance"]


def test_size_mismatch_is_refused(data):
    codebook, cmap = data
    with pytest.raises(ClusterMapMismatchError, match="covers 90 tokens but the codebook has N=89"):
        cluster_quality(codebook[:89], cmap)
