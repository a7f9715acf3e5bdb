"""masc-hf: MASC cluster maps, LlamaGen models and pipelines on the Hugging Face stack.

The top-level namespace is lazy: ``import masc_hf`` costs almost nothing, and each name is
imported from its layer on first use (``masc_hf.build_cluster_map`` pulls in numpy and scipy
only; the model classes pull in torch and transformers).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_LAZY = {
    "build_cluster_map": "masc_hf.clustering",
    "MASCClusterMap": "masc_hf.clustering",
    "cluster_quality": "masc_hf.clustering",
    "codebook_fingerprint": "masc_hf.clustering",
    "CLUSTER_METHODS": "masc_hf.clustering",
    "MASCError": "masc_hf.errors",
    "ClusterMapError": "masc_hf.errors",
    "ClusterMapMismatchError": "masc_hf.errors",
    "CodebookError": "masc_hf.errors",
}

# Modules that register classes with the transformers Auto* factories on import.
_AUTO_REGISTER = ("masc_hf.models",)

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'masc_hf' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)


if TYPE_CHECKING:  # pragma: no cover
    from .clustering import CLUSTER_METHODS, MASCClusterMap, build_cluster_map, cluster_quality, codebook_fingerprint
    from .errors import ClusterMapError, ClusterMapMismatchError, CodebookError, MASCError
