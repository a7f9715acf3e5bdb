"""The sparse engine: the dense engine's partitions (random, clustered, duplicate rows, grid ties),
one result on every run, the certificate, partial maps (save, load, cut), the tree="auto" rule,
the memory message, and the CLI's choice."""

import json

import numpy as np
import pytest

import masc_hf
from masc_hf.clustering import MASCClusterMap, average_linkage, cut_linkage
from masc_hf.clustering.linkage import _deduplicate
from masc_hf.clustering.methods import FULL_TREE_MAX_TOKENS, choose_masc_engine
from masc_hf.clustering.sparse import SparseMemoryError, sparse_merges
from masc_hf.errors import MASCError


def blobs(n, d, centres, spread, seed):
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, d)) * 4
    return middle[rng.integers(0, centres, n)] + spread * rng.standard_normal((n, d))


def codebooks():
    rng = np.random.default_rng(0)
    return {
        "random": rng.standard_normal((1500, 8)).astype(np.float32).astype(np.float64),
        "clustered": blobs(1500, 8, 24, 0.3, 1),
        "duplicates": rng.standard_normal((400, 4))[rng.integers(0, 400, 1200)],
        "grid": rng.integers(0, 30, (1500, 3)).astype(np.float64),  # many exactly tied distances
    }


@pytest.mark.parametrize("name", ["random", "clustered", "duplicates", "grid"])
def test_dense_engine_partitions(name):
    points = codebooks()[name]
    n = points.shape[0]
    dense = average_linkage(points, engine="numpy")
    for k in (n - 1, n // 2, n // 8):
        partial = average_linkage(points, engine="sparse", k=k)
        assert partial.shape == (n - k, 4)
        assert np.array_equal(cut_linkage(partial, k, n), cut_linkage(dense, k))
        np.testing.assert_allclose(partial[:, 2], dense[: n - k, 2], rtol=1e-12, atol=0)
        if name != "grid":  # with ties, merges of equal height can be listed in another order (docs)
            np.testing.assert_array_equal(partial[:, [0, 1, 3]], dense[: n - k, [0, 1, 3]])


def test_same_result_every_run():
    points = blobs(3000, 8, 40, 0.5, 2)
    first = average_linkage(points, engine="sparse", k=700)
    assert first.tobytes() == average_linkage(points.copy(), engine="sparse", k=700).tobytes()


def test_certificate():
    points = blobs(2000, 8, 30, 0.4, 3)
    unique, sizes, _, _ = _deduplicate(points)
    merges = sparse_merges(unique, sizes, clusters=300)
    assert merges.shape[1] == 6 and merges.shape[0] >= unique.shape[0] - 300
    assert (merges[:, 5] >= 0).all()


def test_partial_map_save_load_cut(tmp_path):
    points = codebooks()["clustered"]
    n, k = points.shape[0], 500
    cmap = masc_hf.build_cluster_map(points, k, tree="partial", compute_quality=False)
    full = masc_hf.build_cluster_map(points, k, tree="full", compute_quality=False)
    assert np.array_equal(cmap.mapping, full.mapping)
    assert cmap.tree.shape == (n - k, 4) and cmap.tree_kind == "partial" and full.tree_kind == "full"
    assert cmap.to_dict()["tree"] == "partial" and cmap.to_dict()["has_tree"]
    assert np.array_equal(cmap.cut(900).mapping, full.cut(900).mapping)
    with pytest.raises(MASCError, match="stores only the first 1000 = N - 500 merges.*rebuild with tree='full' or a smaller k"):
        cmap.cut(499)
    cmap.save_pretrained(tmp_path / "map")
    assert json.loads((tmp_path / "map" / "cluster_map_config.json").read_text())["tree"] == "partial"
    loaded = MASCClusterMap.from_pretrained(tmp_path / "map")
    assert loaded == cmap and loaded.tree_kind == "partial"
    assert loaded.smallest_margin == cmap.smallest_margin >= 0 and full.smallest_margin is None
    with pytest.raises(MASCError, match="partial tree"):
        MASCClusterMap(cmap.mapping, tree=cmap.tree[:-1])  # one merge short of k


def test_auto_rule_and_engine_choice():
    assert choose_masc_engine(FULL_TREE_MAX_TOKENS) == "numpy"
    assert choose_masc_engine(FULL_TREE_MAX_TOKENS + 1) == "sparse"
    assert choose_masc_engine(10000, k=5000) == "sparse"
    assert choose_masc_engine(10000, k=1000) == "numpy"  # small k: the dense engine is faster (0.8 GB fits)
    assert choose_masc_engine(10**7, k=1000) == "sparse"  # the dense matrix would not fit
    assert choose_masc_engine(100, tree="partial") == "sparse"
    assert choose_masc_engine(10**6, tree="full") == "numpy"
    assert choose_masc_engine(10**6, engine="dense") == "numpy"
    assert choose_masc_engine(100, engine="sparse") == "sparse"
    with pytest.raises(MASCError, match="only the first N - k merges"):
        choose_masc_engine(100, engine="sparse", tree="full")
    with pytest.raises(MASCError, match="builds the full tree"):
        choose_masc_engine(100, engine="numpy", tree="partial")
    with pytest.raises(MASCError, match="pass k"):
        average_linkage(np.eye(4), engine="sparse")


def test_small_k_memory_message():
    points = blobs(3000, 8, 20, 1.0, 4)
    with pytest.raises(SparseMemoryError, match=r"k=2 is too small .* max_memory=8\.0 MiB.* need .* of known point pairs.*down to k >= (\d+)") as caught:
        average_linkage(points, engine="sparse", k=2, max_memory=8 << 20)
    reachable = int(caught.value.args[0].split("down to k >= ")[1].split(":")[0].split(";")[0])
    assert 2 < reachable < 3000
    assert average_linkage(points, engine="sparse", k=reachable, max_memory=8 << 20).shape == (3000 - reachable, 4)


def test_cli_engines(tmp_path, capsys):
    from masc_hf.cli import main

    np.save(tmp_path / "cb.npy", codebooks()["random"][:600])
    assert main(["build-map", "--codebook", str(tmp_path / "cb.npy"), "--k", "300", "--engine", "sparse", "--out", str(tmp_path / "a")]) == 0
    printed = capsys.readouterr().out
    assert "engine: sparse (forced by --engine" in printed and "smallest certified margin" in printed
    assert MASCClusterMap.from_pretrained(tmp_path / "a").tree_kind == "partial"
    assert main(["build-map", "--codebook", str(tmp_path / "cb.npy"), "--k", "300", "--max-memory", "1MB", "--out", str(tmp_path / "b")]) == 0
    assert "engine: sparse (the dense engine needs" in capsys.readouterr().out
    assert main(["build-map", "--codebook", str(tmp_path / "cb.npy"), "--k", "300", "--engine", "dense", "--out", str(tmp_path / "c")]) == 0
    assert MASCClusterMap.from_pretrained(tmp_path / "c").tree_kind == "full"


@pytest.mark.slow
def test_dense_engine_partition_n8192():
    points = blobs(8192, 8, 64, 0.6, 5).astype(np.float32).astype(np.float64)
    dense = average_linkage(points, engine="numpy")
    for k in (4096, 1024):
        partial = average_linkage(points, engine="sparse", k=k)
        np.testing.assert_array_equal(partial[:, [0, 1, 3]], dense[: 8192 - k, [0, 1, 3]])


@pytest.mark.slow  # the dense engine at N = 32,768: about a minute and 9 GB on 2 cores
def test_dense_engine_partition_n32768():
    """Issue 16's largest size in tests: the paper's d = 8, random and with duplicate rows, k = N / 2."""
    rng = np.random.default_rng(16)
    points = rng.standard_normal((32768, 8)).astype(np.float32).astype(np.float64)
    points[-512:] = points[rng.integers(0, 32768 - 512, 512)]  # duplicate rows: merged first, at height 0
    dense = average_linkage(points, engine="numpy")
    partial = average_linkage(points, engine="sparse", k=16384)
    assert np.array_equal(cut_linkage(partial, 16384, 32768), cut_linkage(dense, 16384))
    np.testing.assert_allclose(partial[:, 2], dense[:16384, 2], rtol=1e-12, atol=0)


def test_radius_raises_keep_the_result(monkeypatch):
    import masc_hf.clustering.sparse as sparse

    points = blobs(2000, 8, 30, 0.5, 6)
    dense = average_linkage(points, engine="numpy")
    monkeypatch.setattr(sparse, "START_NEIGHBOURS", 1)  # a radius far too small: many raises
    partial = average_linkage(points, engine="sparse", k=600)
    np.testing.assert_array_equal(partial[:, [0, 1, 3]], dense[:1400, [0, 1, 3]])
