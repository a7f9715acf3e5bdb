"""The dense engine of the MASC tree: reciprocal-nearest-neighbour rounds (RAC) over a full distance
matrix, written once against a small matrix interface so that numpy (here) and torch
(:mod:`.dense_torch`, CUDA) run the same rounds. Design notes: docs/cluster-maps.md.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["NumpyMatrix", "leaf_distances", "rac_merges"]

SELF = 1e300  # a cluster's distance to itself: finite, so weighted means of rows never make NaN
COMPACT_BELOW = 0.7  # compact the matrix once fewer than this fraction of its rows are alive


def rac_merges(matrix, sizes: np.ndarray, progress: bool = False) -> np.ndarray:
    """All ``m - 1`` merges of average linkage over ``matrix`` (a :class:`NumpyMatrix` or
    ``TorchMatrix`` holding the ``[m, m]`` distances of ``m`` clusters of ``sizes [m]``, slots in
    name order), as a float64 table ``[m - 1, 5]`` of (slot a, slot b, height, size, round), a < b,
    in the order the rounds made them (a round's merges by height, then slots).

    Each round merges every pair of clusters that are each other's nearest neighbour, where
    "nearest" orders candidates by (distance, slot): with a reducible linkage such a pair is a merge
    of the greedy tree whatever else merges first. A merged cluster keeps the smaller slot (its
    name), so slot order stays name order and the first argmin of a row is the tie rule's choice.
    """
    m = sizes.size
    alive = np.ones(m, dtype=bool)
    size = sizes.astype(np.float64)
    slot = np.arange(m)  # slot of each matrix row (changes when the matrix is compacted)
    nn, nnd = matrix.nearest(np.arange(m))
    merges = np.empty((m - 1, 5), dtype=np.float64)
    done = 0
    rounds = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=m - 1, desc="average linkage", unit="merge", mininterval=1.0)
    while done < m - 1:
        act = np.flatnonzero(alive)
        partner = nn[act]
        mutual = (nn[partner] == act) & (act < partner)
        a, b = act[mutual], partner[mutual]
        if a.size == 0:  # the closest pair is always mutual; reaching this is a bug, not bad input
            raise RuntimeError(f"average linkage found no mutual nearest neighbours with {act.size} clusters left")
        height = nnd[a]
        order = np.lexsort((b, a, height))
        a, b, height = a[order], b[order], height[order]
        count = a.size
        weight_b = size[b] / (size[a] + size[b])
        matrix.merge(a, b, weight_b)
        merges[done : done + count] = np.stack([slot[a], slot[b], height, size[a] + size[b], np.full(count, rounds)], axis=1)
        done += count
        rounds += 1
        size[a] += size[b]
        alive[b] = False
        matrix.kill(b)
        if bar is not None:
            bar.update(count)
        if done == m - 1:
            break
        # Nearest neighbours: rows that pointed at a merged cluster, and the merged ones, rescan;
        # every other row keeps its neighbour (reducibility) unless a new cluster is closer or tied
        # with a smaller slot.
        touched = np.zeros(alive.size, dtype=bool)
        touched[a] = True
        touched[b] = True
        act = np.flatnonzero(alive)
        stale = touched[nn[act]] | touched[act]
        rescan, rest = act[stale], act[~stale]
        nn[rescan], nnd[rescan] = matrix.nearest(rescan)
        if rest.size:
            new = np.sort(a)
            value, index = matrix.nearest_among(rest, new)
            closer = (value < nnd[rest]) | ((value == nnd[rest]) & (new[index] < nn[rest]))
            nn[rest[closer]] = new[index[closer]]
            nnd[rest[closer]] = value[closer]
        if act.size < COMPACT_BELOW * alive.size and act.size > 64:
            matrix.compact(act)
            remap = np.full(alive.size, -1, dtype=np.int64)
            remap[act] = np.arange(act.size)
            nn, nnd = remap[nn[act]], nnd[act]
            size, slot = size[act], slot[act]
            alive = np.ones(act.size, dtype=bool)
    if bar is not None:
        bar.close()
    logger.debug("average linkage: %d merges in %d rounds", m - 1, rounds)
    return merges


def leaf_distances(points: np.ndarray, out: np.ndarray, block: int = 1024) -> None:
    """Euclidean distances ``[m, m]`` of ``points [m, d]`` into ``out`` (scipy's ``cdist``:
    ``sqrt(sum_k (x_k - y_k)^2)`` summed in coordinate order, so symmetric and exact on a grid),
    with ``SELF`` on the diagonal."""
    from scipy.spatial.distance import cdist

    for start in range(0, points.shape[0], block):
        cdist(points[start : start + block], points, "euclidean", out=out[start : start + block])
    np.fill_diagonal(out, SELF)


def _allocate(count: int) -> np.ndarray:
    """An uninitialised float64 buffer ``[count]``. A large one is, on Linux, an anonymous mapping
    the kernel fills in at once (``MAP_POPULATE``): faulting in numpy's transparent-huge-page
    allocation one page at a time costs seconds per GB on some virtual machines."""
    import mmap

    populate = getattr(mmap, "MAP_POPULATE", 0)
    if not populate or count < 1 << 24:
        return np.empty(count)
    mapping = mmap.mmap(-1, count * 8, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate)
    return np.frombuffer(mapping, dtype=np.float64)


class NumpyMatrix:
    """The ``[m, m]`` float64 distance matrix of the dense engine, with the few operations the rounds
    need. Rows of dead clusters stay in place (masked by ``+inf`` in ``penalty``) until
    :meth:`compact` drops them; the matrix lives in one buffer that compaction reuses."""

    def __init__(self, points: np.ndarray, chunk_elements: int = 1 << 21):
        m = points.shape[0]
        self._buffer = _allocate(m * m)
        self.d = self._buffer.reshape(m, m)
        leaf_distances(points, self.d)
        self.penalty = np.zeros(m)
        self._chunk = chunk_elements

    def _rows_per_chunk(self) -> int:
        return max(1, self._chunk // self.d.shape[1])

    def nearest(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Nearest live slot of each row (first slot among equal distances) and its distance."""
        index = np.empty(rows.size, dtype=np.int64)
        value = np.empty(rows.size)
        step = self._rows_per_chunk()
        for start in range(0, rows.size, step):
            block = self.d[rows[start : start + step]]
            block += self.penalty
            j = block.argmin(axis=1)
            index[start : start + step] = j
            value[start : start + step] = block[np.arange(j.size), j]
        return index, value

    def nearest_among(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each of ``rows``, its nearest among the slots ``cols`` (sorted; first among ties):
        (distance, position in ``cols``)."""
        width = self.d.shape[1]
        best = np.full(width, np.inf)
        where = np.zeros(width, dtype=np.int64)
        step = self._rows_per_chunk()
        for start in range(0, cols.size, step):
            block = self.d[cols[start : start + step]]  # symmetric: row c holds d(c, x) for every x
            j = block.argmin(axis=0)
            v = block[j, np.arange(width)]
            better = v < best
            best[better] = v[better]
            where[better] = start + j[better]
        return best[rows], where[rows]

    def merge(self, a: np.ndarray, b: np.ndarray, weight_b: np.ndarray) -> None:
        """Replace row and column ``a[p]`` by the weighted mean of rows ``a[p]`` and ``b[p]``
        (``d_a + (d_b - d_a) * weight_b``), the pairs applied in the given order: between two
        pairs merged in the same round, the later one sees the earlier one already merged."""
        d = self.d
        count = a.size
        cross = np.empty((count, count))
        step = self._rows_per_chunk()
        for start in range(0, count, step):
            sl = slice(start, start + step)
            rows = d[a[sl]]
            other = d[b[sl]]
            other -= rows
            other *= weight_b[sl, None]
            rows += other
            # rows now hold d(a[p] + b[p], x); the pair q merging after it averages its columns
            pair = rows[:, a]
            pair += (rows[:, b] - pair) * weight_b
            cross[sl] = pair
            d[a[sl]] = rows
        # between two new clusters p < q the value is cross[p, q]: mirror it below the diagonal
        for start in range(0, count, step):
            stop = min(start + step, count)
            cross[start:stop, :start] = cross[:start, start:stop].T
            block = cross[start:stop, start:stop]
            lower = np.tril_indices(stop - start, -1)
            block[lower] = block.T[lower]
        np.fill_diagonal(cross, SELF)
        for start in range(0, count, step):
            sl = slice(start, start + step)
            d[np.ix_(a[sl], a)] = cross[sl]
        for start in range(0, count, step):
            sl = a[start : start + step]
            d[:, sl] = d[sl].T

    def kill(self, b: np.ndarray) -> None:
        self.penalty[b] = np.inf

    def compact(self, keep: np.ndarray) -> None:
        """Keep only the slots ``keep`` (sorted), in place: row ``i`` of the new ``[k, k]`` matrix
        starts at or before its old row, so rows are moved front to back in blocks."""
        old = self.d
        k = keep.size
        new = self._buffer[: k * k].reshape(k, k)
        step = max(1, self._chunk // old.shape[1])
        for start in range(0, k, step):
            rows = old[keep[start : start + step]]  # a copy, taken before anything is overwritten
            new[start : start + rows.shape[0]] = rows[:, keep]
        self.d = new
        self.penalty = np.zeros(k)
