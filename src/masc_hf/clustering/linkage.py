"""Exact average-linkage (UPGMA) clustering with a documented tie rule: the MASC tree.

Algorithm 1 of the MASC paper run to the root, so one tree serves every k, as a scipy linkage matrix
``[N - 1, 4]``; or, with the sparse engine, its first ``N - k`` merges (a partial tree ``[N - k, 4]``).
The merges come from an engine (numpy, torch or sparse, registered in ``LINKAGE_ENGINES``);
what every engine shares lives here: identical rows merged first, and the merges put in the order
of the tie rule. Design notes (conventions, tie rule, engines): docs/cluster-maps.md.
"""

from __future__ import annotations

import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..errors import MASCError

logger = logging.getLogger(__name__)

__all__ = ["LINKAGE_ENGINES", "LinkageEngine", "available_memory", "average_linkage", "average_linkage_certified", "pairwise_distances", "register_linkage_engine"]


@dataclass(frozen=True)
class LinkageEngine:
    """An engine of the MASC tree. ``merges(points, sizes, progress, device)`` gets the distinct rows
    ``[m, d]`` (float64, in name order) and their multiplicities ``[m]`` and returns the ``m - 1``
    merges as float64 ``[m - 1, 5]``: (row a, row b, height, size, round), a < b, each merge after
    the merges that formed its two clusters. ``devices`` names what ``device=`` it accepts. A
    ``partial`` engine (sparse) also gets ``clusters=k`` and ``max_memory=`` and returns at least the
    merges that come first in the tie rule's order down to k clusters, with a sixth column: the
    merge's certified margin."""

    name: str
    description: str
    merges: Callable[..., np.ndarray]
    devices: str = "cpu"
    partial: bool = False  # makes only the first merges: also gets clusters= and max_memory=, returns [M, 6]


LINKAGE_ENGINES: dict[str, LinkageEngine] = {}


def register_linkage_engine(engine: LinkageEngine) -> LinkageEngine:
    """Make ``engine`` selectable as ``average_linkage(..., engine=engine.name)``."""
    LINKAGE_ENGINES[engine.name] = engine
    return engine


def _numpy_merges(points: np.ndarray, sizes: np.ndarray, progress: bool, device: str | None) -> np.ndarray:
    from .dense import NumpyMatrix, rac_merges

    return rac_merges(NumpyMatrix(points), sizes, progress=progress)


def _torch_merges(points: np.ndarray, sizes: np.ndarray, progress: bool, device: str | None) -> np.ndarray:
    from .dense_torch import TorchMatrix  # imports torch: only here
    from .dense import rac_merges

    return rac_merges(TorchMatrix(points, device=device), sizes, progress=progress)


def _sparse_merges(points, sizes, progress, device, *, clusters, max_memory):
    from .sparse import sparse_merges

    return sparse_merges(points, sizes, progress, device, clusters=clusters, max_memory=max_memory)


register_linkage_engine(
    LinkageEngine("numpy", "dense reciprocal-nearest-neighbour rounds on a float64 matrix (CPU)", _numpy_merges, "cpu")
)
register_linkage_engine(
    LinkageEngine("torch", "the numpy engine's rounds in torch (CUDA, or CPU for tests)", _torch_merges, "cpu, cuda[:i]")
)
register_linkage_engine(
    LinkageEngine(
        "sparse", "certified sparse UPGMA: the first N - k merges without the dense matrix (CPU)", _sparse_merges, "cpu", True
    )
)
ENGINE_ALIASES = {"dense": "numpy"}


def pairwise_distances(points: np.ndarray) -> np.ndarray:
    """Euclidean distance matrix ``[N, N]`` (float64) of ``points [N, d]``, as scipy computes it."""
    from scipy.spatial.distance import cdist

    points = np.ascontiguousarray(points, dtype=np.float64)
    return cdist(points, points, "euclidean")


def average_linkage(
    points: np.ndarray,
    progress: bool = False,
    *,
    engine: str = "auto",
    device: str | None = None,
    k: int | None = None,
    max_memory: int | None = None,
) -> np.ndarray:
    """Average-linkage tree of ``points [N, d]`` as a scipy linkage matrix ``[N - 1, 4]``, or with
    the sparse engine its first ``N - k`` merges ``[N - k, 4]`` (a partial tree).

    Args:
        points: float array ``[N, d]``, ``N >= 2``.
        progress: show a tqdm bar over the merges.
        engine: ``"auto"`` (torch when ``device`` names a GPU, else numpy), or a name in
            ``LINKAGE_ENGINES`` (``"numpy"``, ``"torch"``, ``"sparse"``); ``"dense"`` is ``"numpy"``.
        device: for the torch engine, e.g. ``"cuda"``, ``"cuda:1"`` or ``"cpu"`` (default: CUDA when
            available).
        k: the sparse engine stops once the first ``N - k`` merges are certified (required there).
        max_memory: bytes the sparse engine may spend on known pairs (default: 80% of the memory
            available now); over it, :class:`~masc_hf.clustering.sparse.SparseMemoryError`.

    Memory (dense engines): one float64 ``[N, N]`` matrix (2.1 GB for N = 16384). Same input, same tree, bit for bit,
    on every run; the tie rule is in docs/cluster-maps.md.
    """
    return average_linkage_certified(points, progress, engine=engine, device=device, k=k, max_memory=max_memory)[0]


def average_linkage_certified(
    points: np.ndarray,
    progress: bool = False,
    *,
    engine: str = "auto",
    device: str | None = None,
    k: int | None = None,
    max_memory: int | None = None,
) -> tuple[np.ndarray, float | None]:
    """:func:`average_linkage` and, for the sparse engine, the smallest certified margin of its
    merges (how far below every other candidate's bound each merge was made; ``None`` otherwise)."""
    points = np.asarray(points, dtype=np.float64)
    n = points.shape[0]
    if points.ndim != 2 or n < 2:
        raise ValueError(f"average_linkage needs points of shape [N, d] with N >= 2, got shape {points.shape}")
    chosen = resolve_engine(engine, device)
    if chosen.partial and k is None:
        raise MASCError(f"the {chosen.name} engine makes only the first N - k merges: pass k (1 <= k <= {n})")
    unique, sizes, names, duplicate_merges = _deduplicate(points)
    m = unique.shape[0]
    merges = duplicate_merges
    margin = None
    if m > 1 and not (chosen.partial and k >= m):
        if chosen.partial:
            budget = max_memory if max_memory is not None else int(0.8 * available_memory())
            found = chosen.merges(unique, sizes, progress, device, clusters=k, max_memory=budget)
            if found.size:
                margin = float(found[:, 5].min())
                logger.info("sparse linkage: smallest certified margin %.6g over %d merges", margin, found.shape[0])
            found = found[:, :5]
        else:
            found = chosen.merges(unique, sizes, progress, device)
        found[:, 0] = names[found[:, 0].astype(np.int64)]  # rows -> token ids (the names)
        found[:, 1] = names[found[:, 1].astype(np.int64)]
        merges = np.concatenate([duplicate_merges, found])
    tree = _linkage_matrix(merges, n)
    return (tree[: n - k] if chosen.partial else tree), margin


def available_memory() -> int:
    """Bytes of memory available now (Linux ``MemAvailable``; else 4 GiB)."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


def resolve_engine(engine: str, device: str | None) -> LinkageEngine:
    """The engine ``engine`` names (``"auto"``: torch for a non-CPU ``device``, else numpy)."""
    engine = ENGINE_ALIASES.get(engine, engine)
    if engine == "auto":
        engine = "torch" if device is not None and not str(device).startswith("cpu") else "numpy"
    if engine not in LINKAGE_ENGINES:
        raise MASCError(f"unknown linkage engine {engine!r}; choose 'auto' or one of: {', '.join(LINKAGE_ENGINES)}")
    if engine in ("numpy", "sparse") and device is not None and not str(device).startswith("cpu"):
        raise MASCError(f"the {engine} engine runs on the CPU, not device={device!r}; pass engine='torch' for a GPU")
    return LINKAGE_ENGINES[engine]


def _deduplicate(points: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Identical rows merge first, at height 0, in name order (what the tie rule does with them).
    Returns the distinct rows in name order ``[m, d]``, their multiplicities ``[m]``, their names
    (smallest token id) ``[m]``, and the zero-height merges ``[N - m, 5]`` (round -1)."""
    _, first, inverse = np.unique(points, axis=0, return_index=True, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(first, kind="stable")  # groups by smallest token id
    names = first[order]
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    group = rank[inverse]  # token -> its group, groups numbered in name order
    sizes = np.bincount(group, minlength=names.size)
    others = np.flatnonzero(np.arange(points.shape[0]) != names[group])  # tokens that are not their group's name
    others = others[np.lexsort((others, group[others]))]
    count = np.ones(names.size, dtype=np.int64)
    merged_size = np.empty(others.size)
    for position, token in enumerate(others.tolist()):  # group by group, token order: sizes 2, 3, ...
        count[group[token]] += 1
        merged_size[position] = count[group[token]]
    duplicate_merges = np.stack(
        [names[group[others]], others, np.zeros(others.size), merged_size, np.full(others.size, -1.0)], axis=1
    ).astype(np.float64)
    return np.ascontiguousarray(points[names]), sizes, names, duplicate_merges


def _linkage_matrix(merges: np.ndarray, n: int) -> np.ndarray:
    """scipy linkage matrix ``[n - 1, 4]`` from merges ``[n - 1, 5]`` (name a, name b, height, size,
    round) listed children-first: rows in the order of the tie rule, i.e. repeatedly the merge of
    smallest (height, a, b) among those whose two clusters exist."""
    count = merges.shape[0]
    a = merges[:, 0].astype(np.int64)
    b = merges[:, 1].astype(np.int64)
    height = merges[:, 2]
    # The merges that formed clusters a and b: the latest earlier merge whose result (named by its
    # smaller name, a) carries that name.
    key = a * count + np.arange(count)
    sorted_key = np.sort(key)
    child_a = _latest_before(sorted_key, a, count)
    child_b = _latest_before(sorted_key, b, count)
    order = np.lexsort((b, a, height))
    rank = np.empty(count, dtype=np.int64)
    rank[order] = np.arange(count)
    ready = np.all([(c < 0) | (rank[np.maximum(c, 0)] < rank) for c in (child_a, child_b)], axis=0)
    if not ready.all():  # equal heights across rounds: place merges one by one
        order = _priority_order(a, b, height, child_a, child_b)
        rank[order] = np.arange(count)
    node_a = np.where(child_a >= 0, n + rank[np.maximum(child_a, 0)], a)
    node_b = np.where(child_b >= 0, n + rank[np.maximum(child_b, 0)], b)
    tree = np.empty((count, 4), dtype=np.float64)
    tree[rank, 0] = np.minimum(node_a, node_b)
    tree[rank, 1] = np.maximum(node_a, node_b)
    tree[rank, 2] = height
    tree[rank, 3] = merges[:, 3]
    return tree


def _latest_before(sorted_key: np.ndarray, names: np.ndarray, count: int) -> np.ndarray:
    """For merge ``i``, the latest merge ``j < i`` whose result is named ``names[i]`` (or -1)."""
    position = np.searchsorted(sorted_key, names * count + np.arange(count)) - 1
    found = sorted_key[np.maximum(position, 0)]
    return np.where((position >= 0) & (found // count == names), found % count, -1)


def _priority_order(a, b, height, child_a, child_b) -> np.ndarray:
    """Kahn's order with priority (height, a, b): the greedy algorithm's order of these merges."""
    waiting = (child_a >= 0).astype(np.int64) + (child_b >= 0).astype(np.int64)
    parent = np.full(a.size, -1, dtype=np.int64)
    for children in (child_a, child_b):
        has = children >= 0
        parent[children[has]] = np.flatnonzero(has)
    heap = [(height[i], a[i], b[i], i) for i in np.flatnonzero(waiting == 0).tolist()]
    heapq.heapify(heap)
    order = []
    while heap:
        *_, i = heapq.heappop(heap)
        order.append(i)
        p = parent[i]
        if p >= 0:
            waiting[p] -= 1
            if waiting[p] == 0:
                heapq.heappush(heap, (height[p], a[p], b[p], p))
    return np.asarray(order, dtype=np.int64)
