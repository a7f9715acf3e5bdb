"""The sparse engine of the MASC tree: certified sparse UPGMA (as MC-UPGMA, Loewenstein et al. 2008)
that makes only the first merges, up to a given number of clusters, without the dense matrix.

Only point pairs closer than a radius ``tau`` are known. Every unknown pair is farther than ``tau``,
so a pair of clusters with known sum ``s`` over ``c`` of its ``|A||B|`` point pairs has average at
least ``(s + (|A||B| - c) tau) / (|A||B|)``. Rounds merge every pair of clusters that are each
other's nearest neighbour (the dense engine's rule, ties by name) and whose exact average is below
every other pair's lower bound; a partly known pair that blocks this gets its missing distances
from the vectors; when the unknown pairs block, ``tau`` grows. Design notes: docs/cluster-maps.md.
"""

from __future__ import annotations

import logging

import numpy as np

from ..errors import MASCError

logger = logging.getLogger(__name__)

__all__ = ["SparseMemoryError", "sparse_merges"]

SLACK = 1e-12  # relative: a bound closer than this to a candidate's average is made exact, not trusted
BYTES_PER_PAIR = 120  # peak bytes per known point pair (both directions, complex sums, temporaries)
FILL_PER_ROUND = 1 << 22  # point pairs whose distances are computed per round at most
START_NEIGHBOURS = 8  # tau starts at the median distance to the 8th nearest neighbour (enough for k = N / 2 at d = 8)


class SparseMemoryError(MASCError):
    """The certified search would need more known pairs than ``max_memory`` allows."""


def _distances(points: np.ndarray, i: np.ndarray, j: np.ndarray, block: int = 1 << 20) -> np.ndarray:
    """``cdist``'s value for each pair ``(i[p], j[p])``: ``sqrt(sum_k (x_k - y_k)^2)`` summed in
    coordinate order, bit for bit (so leaf ties are the dense engine's ties)."""
    out = np.empty(i.size)
    for start in range(0, i.size, block):
        x, y = points[i[start : start + block]], points[j[start : start + block]]
        acc = np.zeros(x.shape[0])
        for k in range(points.shape[1]):
            t = x[:, k] - y[:, k]
            acc += t * t
        out[start : start + block] = np.sqrt(acc)
    return out


class _Pairs:
    """Point pairs within ``tau`` (``i < j``, canonical distance ``<= tau``) of ``points [m, d]``."""

    def __init__(self, points: np.ndarray):
        from scipy.spatial import cKDTree

        self.points = points
        self.kd = cKDTree(points, leafsize=32, balanced_tree=False)  # measured 15% faster pair search than the defaults

    def count(self, tau: float) -> int:
        """About how many pairs lie within ``tau``: neighbour counts of a sample of points, scaled."""
        m = self.points.shape[0]
        sample = self.points[np.linspace(0, m - 1, min(m, 512)).astype(np.int64)]
        found = self.kd.query_ball_point(sample, tau, return_length=True, workers=-1)
        return int((found.mean() - 1) * m / 2)

    def within(self, tau: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pairs = self.kd.query_pairs(tau * (1 + 1e-9), output_type="ndarray")  # a little wide: kd rounds otherwise
        i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
        d = _distances(self.points, i, j)
        keep = d <= tau
        return i[keep], j[keep], d[keep]


def _start_tau(points: np.ndarray, kd) -> float:
    m = points.shape[0]
    sample = points[np.linspace(0, m - 1, min(m, 1024)).astype(np.int64)]
    neighbours = min(START_NEIGHBOURS, m - 1)
    dist, _ = kd.query(sample, k=neighbours + 1, workers=-1)
    return float(np.median(dist[:, -1]))


def sparse_merges(
    points: np.ndarray,
    sizes: np.ndarray,
    progress: bool = False,
    device: str | None = None,
    *,
    clusters: int,
    max_memory: int | None = None,
) -> np.ndarray:
    """Merges of average linkage over distinct ``points [m, d]`` (float64, name order) of
    multiplicities ``sizes [m]``, enough that the first ``m - clusters`` in the tie rule's order
    are all among them: float64 ``[M, 6]`` of (row a, row b, height, size, round, margin), a < b,
    children first, ``M >= m - clusters``. ``margin`` is how far below every other candidate's
    (lower-bounded) average the merge was made, ``>= 0``: the certificate.

    ``max_memory`` (bytes): raise :class:`SparseMemoryError` rather than hold more known pairs.
    """
    m0 = points.shape[0]
    needed = m0 - clusters
    if needed <= 0:
        return np.empty((0, 6))
    source = _Pairs(points)
    tau = _start_tau(points, source.kd)
    weight = sizes.astype(np.float64)

    slot_name = np.arange(m0)  # the row id (name) of each live cluster; slots stay in name order
    size = weight.copy()
    label = np.arange(m0)  # point -> slot
    matrix = None
    records: list[np.ndarray] = []
    heights = np.empty(0)
    done = 0
    rounds = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=needed, desc="average linkage (sparse)", unit="merge", mininterval=1.0)

    def load(tau_new: float, old):
        """The cluster-pair matrix at radius ``tau_new``: complex CSR, real = known distance sum,
        imag = known (weighted) count; pairs made exact before keep their values."""
        from scipy.sparse import coo_matrix

        estimate = source.count(tau_new) * BYTES_PER_PAIR
        if max_memory is not None and estimate > max_memory:
            raise _budget_error(estimate, max_memory, m0, int(sizes.sum()), clusters, reached())
        m = slot_name.size
        if max_memory is not None and raised_at:  # extrapolate: each raise doubles the pairs, shrinks m by a factor
            shrink = m / raised_at[-1]
            if shrink < 1:
                raises_left = np.log(m / clusters) / np.log(1 / shrink)
                predicted = min(estimate * 2.0 ** max(raises_left - 1, 0), BYTES_PER_PAIR * m0 * (m0 - 1) / 2)
                if predicted > max_memory:
                    affordable = np.log2(max_memory / estimate) + 1
                    guess = int(m * shrink**affordable) + int(sizes.sum()) - m0
                    raise _budget_error(predicted, max_memory, m0, int(sizes.sum()), clusters, reached(), guess)
        raised_at.append(m)
        i, j, d = source.within(tau_new)
        w = weight[i] * weight[j]
        x, y = label[i], label[j]
        other = x != y
        x, y, w, d = x[other], y[other], w[other], d[other]
        rows = np.concatenate([x, y])
        cols = np.concatenate([y, x])
        data = np.concatenate([w * d + 1j * w] * 2)
        if old is not None:  # keep the exact pairs as they are (their sums were made in another order)
            o = old.tocoo()
            exact = o.data.imag == size[o.row] * size[o.col]
            if exact.any():
                key_old = o.row[exact].astype(np.int64) * m + o.col[exact]
                drop = np.isin(rows.astype(np.int64) * m + cols, key_old)
                rows = np.concatenate([rows[~drop], o.row[exact]])
                cols = np.concatenate([cols[~drop], o.col[exact]])
                data = np.concatenate([data[~drop], o.data[exact]])
        new = coo_matrix((data, (rows, cols)), shape=(m, m)).tocsr()
        new.sum_duplicates()
        new.sort_indices()
        logger.info("sparse linkage: tau=%.6g, %d known point pairs, %d clusters", tau_new, i.size, m)
        return new

    def reached() -> int:
        """Clusters (over all N tokens) after the merges certified so far: every merge below the
        lowest bound left is made, so the first of them in the tie rule's order are known."""
        below = int(np.searchsorted(heights, lowest_left, side="left"))
        return int(sizes.sum()) - (int(sizes.sum()) - m0) - below

    lowest_left = 0.0
    raised_at: list[int] = []  # clusters left at each radius
    if max_memory is not None:  # start no wider than the budget allows
        for _ in range(4 * points.shape[1]):
            if source.count(tau) * BYTES_PER_PAIR <= max_memory:
                break
            tau /= 2.0 ** (1.0 / max(points.shape[1], 1))

    cap = np.inf
    while True:
        if matrix is None:
            matrix = load(tau, None)
        m = slot_name.size
        indptr, cols, data = matrix.indptr, matrix.indices, matrix.data
        length = np.diff(indptr)
        rows = np.repeat(np.arange(m), length)
        total = size[rows] * size[cols]
        full = data.imag == total
        value = np.where(full, data.real / total, np.inf)
        bound_pair = np.where(full, np.inf, (data.real + (total - data.imag) * tau) / total)
        nonempty = length > 0
        starts = indptr[:-1][nonempty]
        best = np.full(m, np.inf)
        nearest = np.full(m, m, dtype=np.int64)
        bound = np.full(m, tau)
        blocker = np.full(m, m, dtype=np.int64)
        if starts.size:
            best[nonempty] = np.minimum.reduceat(value, starts)
            nearest[nonempty] = np.minimum.reduceat(np.where(value == best[rows], cols, m), starts)
            partial_best = np.minimum.reduceat(bound_pair, starts)
            bound[nonempty] = np.minimum(tau, partial_best)
            blocker_all = np.minimum.reduceat(np.where(bound_pair == partial_best[np.cumsum(nonempty)[rows] - 1], cols, m), starts)
            blocker[nonempty] = np.where(partial_best <= tau, blocker_all, m)
        lowest = min(best.min(), bound.min())
        lowest_left = lowest * (1 - SLACK)
        if done >= needed:
            h = heights[needed - 1]
            cap = h * (1 + SLACK)
            if lowest > cap:
                break
        certified = (best < bound * (1 - SLACK)) & (best <= cap)
        partner = np.where(certified, nearest, 0)
        slots = np.arange(m)
        mutual = certified & (partner > slots) & (nearest[partner] == slots) & certified[partner]
        a = np.flatnonzero(mutual)
        b = nearest[a]
        # blocked by a partly known pair below everything else: make it exact
        blocked = ~certified & (blocker < m) & (bound <= best * (1 + SLACK)) & (bound * (1 - SLACK) <= cap)
        if a.size == 0 and not blocked.any():
            tau = _raise(tau, points.shape[1])
            matrix = load(tau, matrix)
            continue
        if blocked.any():
            matrix = _fill(matrix, points, weight, label, size, np.flatnonzero(blocked), blocker, bound)
        if a.size == 0:
            continue
        # margin: the next candidate of a or b (second exact average, or a bound)
        second_value = np.where(cols == nearest[rows], np.inf, value)
        second = np.full(m, np.inf)
        if starts.size:
            second[nonempty] = np.minimum.reduceat(second_value, starts)
        height = best[a]
        margin = np.minimum(np.minimum(second[a], second[b]), np.minimum(bound[a], bound[b])) - height
        order = np.lexsort((b, a, height))
        a, b, height, margin = a[order], b[order], height[order], margin[order]
        merged_size = size[a] + size[b]
        records.append(np.stack([slot_name[a], slot_name[b], height, merged_size, np.full(a.size, rounds), margin], axis=1))
        heights = np.sort(np.concatenate([heights, height]))
        done += a.size
        rounds += 1
        if bar is not None:
            bar.update(min(a.size, max(0, needed - bar.n)))
        # relabel: b joins a (a keeps its slot's name), slots compacted in name order
        size[a] = merged_size
        keep = np.ones(m, dtype=bool)
        keep[b] = False
        into = np.arange(m)
        into[b] = a
        remap = (np.cumsum(keep) - 1)[into]
        matrix = _relabel(matrix, remap, int(keep.sum()))
        label = remap[label]
        size = size[keep]
        slot_name = slot_name[keep]
    if bar is not None:
        bar.close()
    merges = np.concatenate(records) if records else np.empty((0, 6))
    logger.info(
        "sparse linkage: %d merges in %d rounds, tau=%.6g, smallest margin %.3g",
        merges.shape[0], rounds, tau, merges[:, 5].min() if merges.size else np.inf,
    )
    return merges


def _raise(tau: float, dim: int) -> float:
    return tau * 2.0 ** (1.0 / max(dim, 1))  # about twice the known pairs (their count grows like tau^d)


def _relabel(matrix, remap: np.ndarray, m_new: int):
    """Cluster-pair sums after merges: slot ``s`` becomes ``remap[s]``; pairs inside one cluster go."""
    from scipy.sparse import coo_matrix

    coo = matrix.tocoo()
    rows, cols = remap[coo.row], remap[coo.col]
    keep = rows != cols
    new = coo_matrix((coo.data[keep], (rows[keep], cols[keep])), shape=(m_new, m_new)).tocsr()
    new.sum_duplicates()
    new.sort_indices()
    return new


def _fill(matrix, points, weight, label, size, rows_blocked, blocker, bound):
    """Make the blocking pairs of ``rows_blocked`` exact: every point pair's distance from the vectors."""
    from scipy.sparse import coo_matrix

    x, y = rows_blocked, blocker[rows_blocked]
    lo, hi = np.minimum(x, y), np.maximum(x, y)
    _, first = np.unique(lo * size.size + hi, return_index=True)
    lo, hi = lo[first], hi[first]
    order = np.argsort(label, kind="stable")
    count = np.bincount(label, minlength=size.size)
    offset = np.concatenate([[0], np.cumsum(count)])
    work = count[lo] * count[hi]
    priority = np.argsort(np.minimum(bound[lo], bound[hi]), kind="stable")
    take = priority[: max(1, int(np.searchsorted(np.cumsum(work[priority]), FILL_PER_ROUND)))]
    lo, hi, work = lo[take], hi[take], work[take]
    pair = np.repeat(np.arange(lo.size), work)
    step = np.arange(pair.size) - np.repeat(np.cumsum(work) - work, work)
    width = count[hi][pair]
    i = order[offset[lo][pair] + step // width]
    j = order[offset[hi][pair] + step % width]
    d = _distances(points, i, j) * (weight[i] * weight[j])
    sums = np.zeros(lo.size)
    np.add.at(sums, pair, d)
    # replace the two entries of each filled pair
    m = size.size
    coo = matrix.tocoo()
    key_fill = lo * m + hi
    drop = np.isin(np.minimum(coo.row, coo.col).astype(np.int64) * m + np.maximum(coo.row, coo.col), key_fill)
    exact = sums + 1j * (size[lo] * size[hi])
    rows = np.concatenate([coo.row[~drop], lo, hi])
    cols = np.concatenate([coo.col[~drop], hi, lo])
    data = np.concatenate([coo.data[~drop], exact, exact])
    new = coo_matrix((data, (rows, cols)), shape=(m, m)).tocsr()
    new.sort_indices()
    return new


def _size(nbytes: float) -> str:
    return f"{nbytes / 2**30:.2f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def _budget_error(
    estimate: float, max_memory: int, m: int, n: int, clusters: int, reached: int, guess: int | None = None
) -> SparseMemoryError:
    dense = 8 * m * m
    clusters_n = clusters + (n - m)
    need = f"would next need {_size(estimate)}" if guess is None else f"would need about {_size(estimate)} (extrapolated)"
    fits = "" if guess is None or guess <= reached else f"; about k >= {guess} should fit (extrapolated)"
    return SparseMemoryError(
        f"k={clusters_n} is too small for the sparse engine within max_memory={_size(max_memory)}: its "
        f"certified search {need} of known point pairs (a k this small is far up the tree, where nearly every "
        f"distance counts; the dense engine needs {_size(dense)}). Within this budget the search certified the "
        f"map down to k >= {reached}{fits}: ask for such a k, raise max_memory, or use engine='numpy' with "
        f"tree='full' if {_size(dense)} fits"
    )
