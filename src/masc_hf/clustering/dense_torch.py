"""The dense engine's matrix in torch (float64, on a CUDA device, or the CPU for tests): the same
operations as :class:`.dense.NumpyMatrix`, so :func:`.dense.rac_merges` runs the same rounds.
Imports torch; :mod:`.linkage` imports this module only when the torch engine is asked for.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import MASCError
from .dense import SELF, leaf_distances

__all__ = ["TorchMatrix"]


def _device(device: str | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise MASCError(f"device={device!r} is not a torch device ({err}); pass e.g. 'cuda', 'cuda:1' or 'cpu'") from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise MASCError(f"device={device!r} asks for CUDA but torch sees no GPU; pass device='cpu' or engine='numpy'")
    return resolved


class TorchMatrix:
    """The ``[m, m]`` float64 distance matrix on ``device``; see :class:`.dense.NumpyMatrix`."""

    def __init__(self, points: np.ndarray, device: str | None = None):
        self.device = _device(device)
        self.d = _leaf_distances(points, self.device)
        self.penalty = torch.zeros(points.shape[0], dtype=torch.float64, device=self.device)

    def _index(self, values: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(values, dtype=torch.long, device=self.device)

    def nearest(self, rows: np.ndarray, chunk_elements: int = 1 << 26) -> tuple[np.ndarray, np.ndarray]:
        step = max(1, chunk_elements // self.d.shape[1])
        index, value = [], []
        for start in range(0, rows.size, step):
            block = self.d.index_select(0, self._index(rows[start : start + step])) + self.penalty
            v, i = _first_min(block, dim=1)
            index.append(i)
            value.append(v)
        return torch.cat(index).cpu().numpy(), torch.cat(value).cpu().numpy()

    def nearest_among(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        block = self.d.index_select(0, self._index(cols)).index_select(1, self._index(rows))
        value, index = _first_min(block, dim=0)
        return value.cpu().numpy(), index.cpu().numpy()

    def merge(self, a: np.ndarray, b: np.ndarray, weight_b: np.ndarray) -> None:
        d = self.d
        ia, ib = self._index(a), self._index(b)
        w = torch.as_tensor(weight_b, dtype=torch.float64, device=self.device)
        rows = d.index_select(0, ia)
        rows += (d.index_select(0, ib) - rows) * w[:, None]
        pair = rows.index_select(1, ia)
        cross = pair + (rows.index_select(1, ib) - pair) * w
        later = torch.triu(cross, 1)
        later = later + later.T
        later.fill_diagonal_(SELF)
        rows[:, ia] = later
        d[ia] = rows
        d[:, ia] = rows.T

    def kill(self, b: np.ndarray) -> None:
        self.penalty[self._index(b)] = float("inf")

    def compact(self, keep: np.ndarray) -> None:
        index = self._index(keep)
        self.d = self.d.index_select(0, index).index_select(1, index)
        self.penalty = torch.zeros(keep.size, dtype=torch.float64, device=self.device)


def _first_min(block: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum along ``dim`` and the first index that attains it (the tie rule: smallest slot);
    ``torch.min`` does not promise which index it returns among equal values."""
    value = block.amin(dim=dim, keepdim=True)
    hits = block == value
    positions = torch.arange(block.shape[dim], device=block.device).reshape([-1 if i == dim else 1 for i in range(block.ndim)])
    index = torch.where(hits, positions, block.shape[dim]).amin(dim=dim)
    return value.squeeze(dim), index


def _leaf_distances(points: np.ndarray, device: torch.device) -> torch.Tensor:
    """:func:`.dense.leaf_distances` on ``device``: ``sqrt(sum_k (x_k - y_k)^2)`` summed in coordinate
    order, one rounding per operation, as scipy's ``cdist`` computes it. On the CPU it is ``cdist``
    itself: torch's vectorised CPU ``sqrt`` is not correctly rounded (CUDA's float64 one is)."""
    if device.type == "cpu":
        d = np.empty((points.shape[0], points.shape[0]))
        leaf_distances(points, d)
        return torch.from_numpy(d)
    d = squared_distances(torch.as_tensor(points, dtype=torch.float64, device=device)).sqrt_()
    d.fill_diagonal_(SELF)
    return d


def squared_distances(x: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """``sum_k (x_ik - x_jk)^2`` ``[m, m]`` for ``x [m, d]``, summed in coordinate order."""
    m = x.shape[0]
    out = torch.empty(m, m, dtype=x.dtype, device=x.device)
    for start in range(0, m, block):
        rows = x[start : start + block]
        total = torch.zeros(rows.shape[0], m, dtype=x.dtype, device=x.device)
        for k in range(x.shape[1]):
            diff = rows[:, k, None] - x[None, :, k]
            total += diff * diff
        out[start : start + block] = total
    return out
