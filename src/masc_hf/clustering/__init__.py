"""MASC cluster maps: the exact average-linkage tree, the baselines, the map, quality figures.

Pure functions over numpy arrays (numpy + scipy; scikit-learn for the k-means baselines, imported
when used). ``import masc_hf.clustering`` stays light: ``MASCClusterMap`` (whose base class comes
from transformers, for diffusers) and the quality helpers load on first access.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

from .codebook import as_codebook, codebook_fingerprint, l2_normalize
from .linkage import LINKAGE_ENGINES, average_linkage, pairwise_distances
from .methods import CLUSTER_METHODS, HIERARCHICAL_METHODS, canonical_labels, check_num_clusters, cut_linkage, run_method

_LAZY = {
    "MASCClusterMap": ".cluster_map",
    "build_cluster_map": ".cluster_map",
    "check_cluster_map": ".cluster_map",
    "cluster_quality": ".quality",
    "sampled_silhouette": ".quality",
    "compare_methods": ".compare",
    # moved to masc_hf.vq.codebook (reading files is the tokenizers' room); kept here for one release
    "read_codebook_file": "masc_hf.vq.codebook",
    "LLAMAGEN_CODEBOOK_KEY": "masc_hf.vq.codebook",
}

__all__ = [
    "CLUSTER_METHODS",
    "HIERARCHICAL_METHODS",
    "LINKAGE_ENGINES",
    "as_codebook",
    "average_linkage",
    "canonical_labels",
    "check_num_clusters",
    "codebook_fingerprint",
    "cut_linkage",
    "l2_normalize",
    "pairwise_distances",
    "run_method",
    *_LAZY,
]
__getattr__, __dir__, _ = attach(__name__, _LAZY)

if TYPE_CHECKING:  # pragma: no cover
    from .cluster_map import MASCClusterMap, build_cluster_map, check_cluster_map
    from .compare import compare_methods
    from .quality import cluster_quality, sampled_silhouette
