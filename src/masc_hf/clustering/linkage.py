"""Exact average-linkage (UPGMA) clustering with a documented tie rule: the MASC tree.

Algorithm 1 of the MASC paper run to the root, so one tree serves every k, as a scipy linkage matrix
``[N - 1, 4]``; ties are broken by one rule any engine can reproduce byte for byte.
Design notes (the linkage-matrix conventions, the tie rule): docs/cluster-maps.md.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["average_linkage", "pairwise_distances"]


def pairwise_distances(points: np.ndarray) -> np.ndarray:
    """Euclidean distance matrix ``[N, N]`` (float64) of ``points [N, d]``, as scipy computes it."""
    from scipy.spatial.distance import cdist

    points = np.ascontiguousarray(points, dtype=np.float64)
    return cdist(points, points, "euclidean")


def average_linkage(points: np.ndarray, progress: bool = False) -> np.ndarray:
    """Average-linkage tree of ``points [N, d]`` as a scipy linkage matrix ``[N - 1, 4]``.

    Time O(N^2) per merge in the worst case, O(N^2) overall in practice; memory one float64
    ``N x N`` matrix (2.1 GB for N = 16384). See docs/cluster-maps.md for the tie rule.
    """
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    if n < 2:
        raise ValueError(f"average_linkage needs at least 2 points, got {n}")
    dist = pairwise_distances(points)
    return _average_linkage_from_square(dist, progress=progress)


def _average_linkage_from_square(dist: np.ndarray, progress: bool = False) -> np.ndarray:
    """The merge loop on a square distance matrix, which it overwrites (tie rule: docs/cluster-maps.md).

    Every active cluster lives in the row of its smallest token id (its name). For each active
    row ``i`` we keep ``nn_dist[i] = min_{j > i active} D[i, j]`` and ``nn_idx[i]`` the smallest
    such ``j``; the global ``argmin`` of ``nn_dist`` (first occurrence) is then the
    lexicographically smallest closest pair. After merging ``b`` into ``a`` (``a < b``) only rows
    whose neighbour was ``a`` or ``b`` need a rescan; rows ``i < a`` may also gain ``a`` as a
    (tied) nearest neighbour, which is checked in one vectorised step.
    """
    n = dist.shape[0]
    inf = np.inf
    np.fill_diagonal(dist, inf)

    nn_dist = np.full(n, inf)
    nn_idx = np.full(n, n, dtype=np.int64)
    for i in range(n - 1):
        row = dist[i, i + 1 :]
        j = int(np.argmin(row))
        nn_dist[i] = row[j]
        nn_idx[i] = i + 1 + j

    size = np.ones(n, dtype=np.int64)
    node = np.arange(n, dtype=np.int64)  # scipy cluster number of the cluster living in each row
    merges = np.empty((n - 1, 4), dtype=np.float64)

    steps = range(n - 1)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="average linkage", unit="merge", mininterval=1.0)

    for step in steps:
        a = int(np.argmin(nn_dist))
        b = int(nn_idx[a])
        height = float(nn_dist[a])
        na, nb = size[a], size[b]
        node_a, node_b = node[a], node[b]
        merges[step] = (min(node_a, node_b), max(node_a, node_b), height, na + nb)

        # Algorithm 1, line 10: weighted mean of the two rows (inactive columns stay inf).
        new_row = (na * dist[a] + nb * dist[b]) / (na + nb)
        new_row[a] = inf
        new_row[b] = inf
        dist[a] = new_row
        dist[:, a] = new_row
        dist[b] = inf
        dist[:, b] = inf
        size[a] = na + nb
        size[b] = 0
        node[a] = n + step
        nn_dist[b] = inf
        nn_idx[b] = n

        # Rows whose nearest neighbour was a or b must rescan; row a always does.
        stale = np.flatnonzero((nn_idx == a) | (nn_idx == b))
        for i in (a, *stale.tolist()):
            if i >= n - 1 or size[i] == 0:
                nn_dist[i] = inf
                nn_idx[i] = n
                continue
            row = dist[i, i + 1 :]
            j = int(np.argmin(row))
            nn_dist[i] = row[j]
            nn_idx[i] = i + 1 + j if np.isfinite(row[j]) else n

        # Rows i < a now see a at new_row[i]: adopt it where it is closer, or tied and named lower.
        head = new_row[:a]
        better = (head < nn_dist[:a]) | ((head == nn_dist[:a]) & (a < nn_idx[:a]))
        better &= size[:a] > 0
        if better.any():
            idx = np.flatnonzero(better)
            nn_dist[idx] = head[idx]
            nn_idx[idx] = a

    return merges
