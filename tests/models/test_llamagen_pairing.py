"""A MASC model meets its cluster map once, in the pairing checks (pipeline construction, training
start, evaluation): any other map, and any map for a flat model, is refused with the reason."""

import pytest

import masc_hf
from masc_hf.errors import ClusterMapMismatchError
from masc_hf.models import LlamaGenForImageGeneration
from masc_hf.pipelines.pairing import check_map_fits_model


def test_masc_model_refuses_a_map_that_does_not_belong(masc_model, tiny_codebook, tiny_config, tiny_cluster_map):
    check_map_fits_model(tiny_cluster_map, masc_model)  # its own map fits
    other_codebook = masc_hf.build_cluster_map(tiny_codebook + 1.0, 16, compute_quality=False)
    with pytest.raises(ClusterMapMismatchError, match="trained on cluster map"):
        check_map_fits_model(other_codebook, masc_model)
    other_method = masc_hf.build_cluster_map(tiny_codebook, 16, method="kmeans", compute_quality=False)
    with pytest.raises(ClusterMapMismatchError, match="trained on cluster map"):
        check_map_fits_model(other_method, masc_model)
    with pytest.raises(ClusterMapMismatchError, match="k=8"):
        check_map_fits_model(tiny_cluster_map.cut(8), masc_model)
    smaller = masc_hf.build_cluster_map(tiny_codebook[:200], 16, compute_quality=False)
    with pytest.raises(ClusterMapMismatchError, match="N=200"):
        check_map_fits_model(smaller, masc_model)
    flat = LlamaGenForImageGeneration(tiny_config)
    with pytest.raises(ClusterMapMismatchError, match="flat"):
        check_map_fits_model(tiny_cluster_map, flat)
    with pytest.raises(ClusterMapMismatchError, match="no cluster_map was given"):
        check_map_fits_model(None, masc_model)
