"""Cluster-quality figures of a map over its codebook (codebook space, no model needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.spatial.distance import cdist, pdist

from ..errors import ClusterMapMismatchError
from .codebook import as_codebook

__all__ = ["cluster_quality", "sampled_silhouette"]


def _labels_of(cluster_map_or_labels: Any) -> np.ndarray:
    mapping = getattr(cluster_map_or_labels, "mapping", cluster_map_or_labels)
    return np.asarray(mapping, dtype=np.int64)


def cluster_quality(codebook: Any, cluster_map: Any, sample_size: int = 2000, seed: int = 0) -> dict:
    """Figures describing how a partition fits its codebook ``[N, d]``.

    ``cluster_map`` is a :class:`MASCClusterMap` or a label array ``[N]``. Returns a dict:

    * ``size_min``, ``size_median``, ``size_max``, ``singletons``: the cluster-size distribution.
    * ``mean_intra_cluster_distance``: mean ||v_i - v_j|| over all unordered pairs i < j that share
      a cluster (``None`` when every cluster is a singleton).
    * ``expected_replacement_distance``: E||v_i - v_j||, i uniform over tokens, j uniform over i's
      cluster (j = i allowed): what random-member decoding costs in codebook space.
    * ``silhouette``: mean silhouette coefficient of ``sample_size`` tokens drawn with ``seed``,
      each computed exactly against the full partition (singletons count 0, as in Rousseeuw).
    """
    return quality_of_valid(as_codebook(codebook), cluster_map, sample_size, seed)


def quality_of_valid(array: np.ndarray, cluster_map: Any, sample_size: int = 2000, seed: int = 0) -> dict:
    """:func:`cluster_quality` of a codebook :func:`as_codebook` already returned (no second check)."""
    labels = _labels_of(cluster_map)
    if labels.shape != (array.shape[0],):
        raise ClusterMapMismatchError(
            f"the partition covers {labels.shape[0] if labels.ndim == 1 else labels.shape} tokens but the codebook has "
            f"N={array.shape[0]}; pass the codebook the map was built from"
        )
    sizes = np.bincount(labels)
    order = np.argsort(labels, kind="stable")
    offsets = np.concatenate([[0], np.cumsum(sizes)])

    pair_sum = 0.0
    pair_count = 0
    replacement_sum = 0.0
    for c in np.flatnonzero(sizes > 1).tolist():
        members = array[order[offsets[c] : offsets[c + 1]]]
        d = pdist(members)
        s = members.shape[0]
        pair_sum += float(d.sum())
        pair_count += d.size
        # sum over i of mean_j ||v_i - v_j|| = (2 * sum of pairs) / s
        replacement_sum += 2.0 * float(d.sum()) / s
    return {
        "num_tokens": int(array.shape[0]),
        "num_clusters": int(sizes.size),
        "size_min": int(sizes.min()),
        "size_median": float(np.median(sizes)),
        "size_max": int(sizes.max()),
        "singletons": int((sizes == 1).sum()),
        "mean_intra_cluster_distance": pair_sum / pair_count if pair_count else None,
        "expected_replacement_distance": replacement_sum / array.shape[0],
        "silhouette": sampled_silhouette(array, labels, sample_size=sample_size, seed=seed),
    }


def sampled_silhouette(codebook: np.ndarray, labels: np.ndarray, sample_size: int = 2000, seed: int = 0, block: int = 256) -> float | None:
    """Mean silhouette of a uniform sample of tokens, each scored against the *full* partition.

    Hand-written because scikit-learn's ``silhouette_score(sample_size=...)`` also subsamples the
    clusters, which at k ~ N/2 turns nearly every cluster into a singleton. Cost O(sample * N * d).
    Returns ``None`` when there is a single cluster (silhouette undefined).
    """
    labels = np.asarray(labels, dtype=np.int64)
    n = labels.size
    sizes = np.bincount(labels).astype(np.float64)
    k = sizes.size
    if k < 2:
        return None
    from scipy.sparse import csr_matrix

    onehot_t = csr_matrix((np.ones(n), (labels, np.arange(n))), shape=(k, n))  # [k, N]
    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(sample_size, n), replace=False))
    scores = []
    for start in range(0, sample.size, block):
        idx = sample[start : start + block]
        dist = cdist(codebook[idx], codebook)  # [b, N]
        sums = np.asarray((onehot_t @ dist.T).T)  # [b, k] per-cluster sums of distances
        own = labels[idx]
        own_size = sizes[own]
        a = np.where(own_size > 1, sums[np.arange(idx.size), own] / np.maximum(own_size - 1, 1), 0.0)
        means = sums / sizes
        means[np.arange(idx.size), own] = np.inf
        b = means.min(axis=1)
        s = np.where(own_size > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-300), 0.0)
        scores.append(s)
    return float(np.concatenate(scores).mean())
