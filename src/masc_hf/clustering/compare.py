"""Several clustering methods side by side on one codebook (``masc-hf compare``)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .cluster_map import build_cluster_map
from .codebook import as_codebook
from .methods import CLUSTER_METHODS
from ..errors import MASCError


def compare_methods(codebook: Any, k: int, methods: Iterable[str] = ("masc", "kmeans"), seed: int = 0) -> list[dict]:
    """Build a map with each method and return one row per method: its quality figures
    (:func:`cluster_quality`) plus ``method`` and ``seconds`` (wall time of the build)."""
    array = as_codebook(codebook)
    methods = list(methods)
    unknown = [m for m in methods if m not in CLUSTER_METHODS]
    if unknown:
        raise MASCError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(CLUSTER_METHODS)}")
    rows = []
    for method in methods:
        start = time.perf_counter()
        cluster_map = build_cluster_map(array, k, method=method, seed=seed, compute_quality=False)
        seconds = time.perf_counter() - start
        from .quality import quality_of_valid

        rows.append({"method": method, "seconds": seconds, **quality_of_valid(array, cluster_map, seed=seed)})
    return rows
