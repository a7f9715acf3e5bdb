"""Clustering methods behind ``build_cluster_map``: MASC and the paper's baselines, all numbering
their cluster ids by one rule (and, for hierarchical methods, returning the merge tree).
Design notes (the cluster-id rule): docs/cluster-maps.md.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass

import numpy as np

from ..errors import MASCError
from .linkage import average_linkage_certified, resolve_engine

logger = logging.getLogger(__name__)

__all__ = [
    "CLUSTER_METHODS",
    "HIERARCHICAL_METHODS",
    "Partition",
    "canonical_labels",
    "check_num_clusters",
    "choose_masc_engine",
    "cut_linkage",
    "run_method",
]

# method -> one line for --help and the model card
CLUSTER_METHODS: dict[str, str] = {
    "masc": "MASC: exact average linkage (UPGMA) on Euclidean distances, deterministic ties",
    "kmeans": "k-means, scikit-learn, init='random', n_init=10, max_iter=300, tol=1e-4 (paper A.3)",
    "kmeans++": "k-means with k-means++ seeding, otherwise as 'kmeans' (paper Table 3)",
    "centroid": "bottom-up with centroid distance ('MASC w/ centroid', paper Table 3), scipy",
    "single": "single linkage (MIN), scipy",
    "complete": "complete linkage (MAX), scipy",
    "ward": "Ward linkage, scipy",
    "balanced-kmeans": "balanced k-means (IAR): exactly N/k tokens per cluster",
    "random": "a seeded uniformly random partition into k non-empty clusters",
}
HIERARCHICAL_METHODS = ("masc", "centroid", "single", "complete", "ward")


@dataclass
class Partition:
    labels: np.ndarray  # int64 [N], canonical cluster ids 0..k-1
    tree: np.ndarray | None  # float64 [N-1, 4] linkage matrix (or its first N - k rows), hierarchical methods only
    smallest_margin: float | None = None  # the sparse engine's certificate


def check_num_clusters(k, num_tokens: int) -> int:
    """``k`` as an int in ``[1, N]``, or a clear error."""
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        if isinstance(k, numbers.Real) and float(k).is_integer():
            raise MASCError(f"k must be an integer, got {k!r} ({type(k).__name__}); pass k={int(k)}")
        raise MASCError(f"k must be an integer number of clusters, got {k!r} ({type(k).__name__})")
    k = int(k)
    if k < 1:
        raise MASCError(f"k must be at least 1, got k={k}")
    if k > num_tokens:
        raise MASCError(f"k={k} is larger than the number of tokens N={num_tokens}; choose 1 <= k <= {num_tokens}")
    return k


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Renumber arbitrary labels ``[N]`` so clusters are ordered by their smallest token id."""
    labels = np.asarray(labels)
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)
    return rank[inverse.reshape(-1)]


def cut_linkage(tree: np.ndarray, k: int, num_tokens: int | None = None) -> np.ndarray:
    """Canonical labels ``[N]`` after the first ``N - k`` merges of a linkage matrix ``[N-1, 4]``,
    or of a partial tree ``[M, 4]`` (its first ``M`` merges; pass ``num_tokens=N``, ``k >= N - M``)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    tree = np.asarray(tree)
    n = tree.shape[0] + 1 if num_tokens is None else int(num_tokens)
    k = check_num_clusters(k, n)
    if n - k > tree.shape[0]:
        raise MASCError(
            f"this map stores only the first {tree.shape[0]} = N - {n - tree.shape[0]} merges, so it cuts into "
            f"k >= {n - tree.shape[0]} clusters, not k={k}; rebuild with tree='full' or a smaller k"
        )
    children = tree[: n - k, :2].astype(np.int64)
    # Every cluster is represented by its smallest token id (lowest leaf under it).
    rep = np.empty(n + tree.shape[0], dtype=np.int64)
    rep[:n] = np.arange(n)
    all_children = tree[:, :2].astype(np.int64)
    for i, (left, right) in enumerate(all_children.tolist()):
        rep[n + i] = min(rep[left], rep[right])
    edges = rep[children]
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    if count != k:  # only possible for a malformed tree
        raise MASCError(f"the tree does not cut into k={k} clusters (got {count}); it is not a valid linkage matrix")
    return canonical_labels(labels)


FULL_TREE_MAX_TOKENS = 8192  # auto: the dense engine's full tree up to here (<= 0.5 GB, ~3 s), the sparse one above
SPARSE_MIN_FRACTION = 4  # auto: the sparse engine for k >= N / 4 (measured 5.6 s at N = 16384, k = N / 4; 21 s at N / 8)


def choose_masc_engine(
    num_tokens: int, engine: str = "auto", device: str | None = None, tree: str = "auto", k: int | None = None
) -> str:
    """The MASC engine for ``tree``: ``"full"`` (every merge) a dense engine, ``"partial"`` (the
    first N - k merges) the sparse engine, ``"auto"`` partial when N > 8192 and either k >= N / 4
    (or k unknown) or the dense matrix would not fit in 80% of the free memory, else full.
    ``engine`` (or a GPU ``device``) forces an engine; sparse means partial."""
    if tree not in ("auto", "full", "partial"):
        raise MASCError(f"tree={tree!r}: choose 'auto', 'full' (every merge) or 'partial' (the first N - k merges)")
    chosen = resolve_engine(engine, device).name if engine != "auto" or device is not None else "auto"
    if chosen == "auto":
        if tree == "auto":
            from .linkage import available_memory

            large = num_tokens > FULL_TREE_MAX_TOKENS
            dense_fits = 8 * num_tokens**2 <= 0.8 * available_memory()
            partial = large and (k is None or k * SPARSE_MIN_FRACTION >= num_tokens or not dense_fits)
        else:
            partial = tree == "partial"
        return "sparse" if partial else resolve_engine("auto", None).name
    is_partial = resolve_engine(chosen, device).partial
    if tree == "full" and is_partial:
        raise MASCError(f"engine={engine!r} makes only the first N - k merges; pass tree='full' with engine='numpy' or 'torch'")
    if tree == "partial" and not is_partial:
        raise MASCError(f"engine={engine!r} builds the full tree; pass tree='partial' with engine='sparse' (or engine='auto')")
    return chosen


def _scipy_linkage(codebook: np.ndarray, method: str) -> np.ndarray:
    from scipy.cluster.hierarchy import linkage

    # Raw observations: scipy computes Euclidean distances itself (required for centroid/ward).
    return linkage(codebook, method=method, metric="euclidean")


def _kmeans(codebook: np.ndarray, k: int, seed: int, init: str, progress: bool = False) -> np.ndarray:
    """scikit-learn's KMeans with the paper's settings. The n_init=10 restarts run one by one on a
    shared RandomState (exactly what KMeans(n_init=10) does inside) so a progress bar can follow them."""
    from sklearn.cluster import KMeans
    from sklearn.utils import check_random_state

    random_state = check_random_state(seed)
    best_labels, best_inertia = None, None
    restarts = range(10)
    if progress:
        from tqdm.auto import tqdm

        restarts = tqdm(restarts, desc=f"{init} k-means restarts", unit="run")
    for _ in restarts:
        model = KMeans(n_clusters=k, init=init, n_init=1, max_iter=300, tol=1e-4, random_state=random_state).fit(codebook)
        if best_inertia is None or model.inertia_ < best_inertia:
            best_labels, best_inertia = model.labels_, model.inertia_
    return best_labels


def _balanced_kmeans(codebook: np.ndarray, k: int, seed: int, max_iter: int = 50, progress: bool = False) -> np.ndarray:
    """Equal-size k-means: k-means++ seeds, then alternate a capacity-constrained greedy assignment
    (points that lose most by not getting their nearest centre go first; each takes its nearest
    centre with room left) and a centroid update, until the assignment stops changing.
    Hand-written: scikit-learn and scipy have no size-constrained k-means."""
    from scipy.spatial.distance import cdist
    from sklearn.cluster import kmeans_plusplus

    n = codebook.shape[0]
    if n % k:
        raise MASCError(
            f"balanced-kmeans needs N divisible by k (N={n}, k={k}); choose k among the divisors of N, e.g. {_divisor_near(n, k)}"
        )
    capacity = n // k
    centers, _ = kmeans_plusplus(codebook, k, random_state=seed)
    labels = np.full(n, -1, dtype=np.int64)
    iterations = range(max_iter)
    if progress:
        from tqdm.auto import tqdm

        iterations = tqdm(iterations, desc="balanced k-means", unit="iter")
    for _ in iterations:
        dist = cdist(codebook, centers, "sqeuclidean")
        order = np.argsort(dist.min(axis=1) - dist.max(axis=1), kind="stable")
        room = np.full(k, capacity, dtype=np.int64)
        new = np.empty(n, dtype=np.int64)
        full = np.zeros(k, dtype=bool)
        for i in order.tolist():
            row = np.where(full, np.inf, dist[i])
            c = int(np.argmin(row))
            new[i] = c
            room[c] -= 1
            if room[c] == 0:
                full[c] = True
        if np.array_equal(new, labels):
            break
        labels = new
        centers = np.stack([codebook[labels == c].mean(axis=0) for c in range(k)])
    return labels


def _divisor_near(n: int, k: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: (abs(d - k), d))


def _random_partition(n: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(k), rng.integers(0, k, size=n - k)])  # every cluster non-empty
    return rng.permutation(labels)


def run_method(
    codebook: np.ndarray,
    k: int,
    method: str,
    seed: int = 0,
    progress: bool = False,
    *,
    engine: str = "auto",
    device: str | None = None,
    tree: str = "auto",
    max_memory: int | None = None,
) -> Partition:
    """Cluster a validated float64 codebook ``[N, d]`` into ``k`` clusters with ``method``
    (``engine``/``device``: which engine builds the MASC tree, see :func:`average_linkage`;
    ``tree``: ``"full"``, ``"partial"`` or ``"auto"``, see :func:`choose_masc_engine`)."""
    if method not in CLUSTER_METHODS:
        raise MASCError(f"unknown clustering method {method!r}; choose one of: {', '.join(CLUSTER_METHODS)}")
    if method != "masc" and (engine != "auto" or device is not None or tree != "auto"):
        raise MASCError(
            f"engine={engine!r}, device={device!r} and tree={tree!r} choose how the MASC tree is built; method {method!r} takes neither of them"
        )
    if method == "masc":
        engine = choose_masc_engine(codebook.shape[0], engine, device, tree, k)  # a bad choice fails before any work
    if method not in HIERARCHICAL_METHODS and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32):
        raise MASCError(f"seed={seed!r} must be an integer in [0, 2**32) for method {method!r}; pass e.g. seed=0")
    n = codebook.shape[0]
    k = check_num_clusters(k, n)
    logger.info("clustering N=%d d=%d into k=%d with %s", n, codebook.shape[1], k, method)
    if method == "masc":
        merges, margin = average_linkage_certified(
            codebook, progress=progress, engine=engine, device=device, k=k, max_memory=max_memory
        )
        return Partition(cut_linkage(merges, k, n), merges, margin)
    if method in HIERARCHICAL_METHODS:
        merges = _scipy_linkage(codebook, method)
        return Partition(cut_linkage(merges, k), merges)
    if method in ("kmeans", "kmeans++"):
        labels = _kmeans(codebook, k, seed, init="random" if method == "kmeans" else "k-means++", progress=progress)
    elif method == "balanced-kmeans":
        labels = _balanced_kmeans(codebook, k, seed, progress=progress)
    else:
        labels = _random_partition(n, k, seed)
    labels = canonical_labels(labels)
    found = int(labels.max()) + 1
    if found != k:  # k-means can leave clusters empty on degenerate codebooks (many duplicate rows)
        raise MASCError(
            f"{method} produced {found} non-empty clusters instead of k={k} (the codebook has too few "
            f"distinct rows: {len(np.unique(codebook, axis=0))}); lower k or use method='masc'"
        )
    return Partition(labels, None)
