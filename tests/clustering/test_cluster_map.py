import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import masc_hf
from masc_hf import MASCClusterMap, build_cluster_map
from masc_hf.clustering import check_cluster_map, codebook_fingerprint
from masc_hf.errors import ClusterMapError, ClusterMapMismatchError, CodebookError, MASCError


@pytest.fixture(scope="module")
def codebook():
    return np.random.default_rng(1).standard_normal((128, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def cmap(codebook):
    return build_cluster_map(codebook, 32, source_tokenizer="unit-test")


# ---------------------------------------------------------------- properties
codebooks = st.integers(2, 60).flatmap(
    lambda n: st.tuples(
        st.integers(0, 2**31 - 1),
        st.just(n),
        st.integers(1, 4),
        st.integers(1, n),
        st.booleans(),
    )
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(codebooks)
def test_map_properties(params):
    seed, n, d, k, integer_grid = params
    rng = np.random.default_rng(seed)
    points = rng.integers(0, 3, size=(n, d)).astype(float) if integer_grid else rng.standard_normal((n, d))
    cmap = build_cluster_map(points, k, compute_quality=False)
    # every token in exactly one cluster, exactly k clusters, sizes add up
    assert cmap.mapping.shape == (n,) and cmap.num_clusters == k
    assert sorted(np.concatenate([cmap.members(c) for c in range(k)]).tolist()) == list(range(n))
    assert cmap.cluster_sizes.sum() == n and (cmap.cluster_sizes > 0).all()
    # decode(c) is always a member of c
    coarse = rng.integers(0, k, size=50)
    fine = cmap.decode(coarse, generator=seed)
    assert np.array_equal(cmap.encode(fine), coarse)
    # cut(k2) equals a fresh build at k2
    k2 = int(rng.integers(1, n + 1))
    assert cmap.cut(k2) == build_cluster_map(points, k2, compute_quality=False)


def test_numbering_rule(cmap):
    first_members = [cmap.members(c)[0] for c in range(cmap.num_clusters)]
    assert first_members == sorted(first_members) and first_members[0] == 0


# ---------------------------------------------------------------- encode / decode
def test_encode_decode_numpy_and_torch_any_shape(cmap):
    fine = np.arange(128).reshape(2, 4, 16)
    coarse = cmap.encode(fine)
    assert coarse.shape == fine.shape and coarse.dtype == np.int64
    assert np.array_equal(coarse, cmap.mapping[fine])
    coarse_t = cmap.encode(torch.from_numpy(fine).int())
    assert isinstance(coarse_t, torch.Tensor) and torch.equal(coarse_t, torch.from_numpy(coarse))
    decoded = cmap.decode(coarse_t, generator=torch.Generator().manual_seed(0))
    assert decoded.shape == coarse_t.shape and decoded.dtype == torch.int64
    assert torch.equal(cmap.encode(decoded), coarse_t)


def test_decode_is_reproducible_and_uniform(cmap):
    big = int(np.argmax(cmap.cluster_sizes))
    ids = torch.full((20000,), big)
    a = cmap.decode(ids, generator=torch.Generator().manual_seed(3))
    b = cmap.decode(ids, generator=torch.Generator().manual_seed(3))
    c = cmap.decode(ids, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(cmap.decode(ids, generator=5), cmap.decode(ids, generator=5))
    counts = np.bincount(a.numpy(), minlength=128)[cmap.members(big)]
    expected = 20000 / cmap.cluster_sizes[big]
    assert set(np.flatnonzero(np.bincount(a.numpy(), minlength=128))) == set(cmap.members(big).tolist())
    assert np.abs(counts - expected).max() < 6 * np.sqrt(expected)
    np_a = cmap.decode(np.full(100, big), generator=np.random.default_rng(1))
    assert np.array_equal(np_a, cmap.decode(np.full(100, big), generator=np.random.default_rng(1)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_decode_on_cuda_stays_on_device(cmap):
    ids = torch.arange(32, device="cuda")
    out = cmap.decode(ids, generator=torch.Generator(device="cuda").manual_seed(0))
    assert out.device.type == "cuda" and torch.equal(cmap.encode(out), ids)


@pytest.mark.parametrize("bad", [np.array([128]), np.array([-1]), torch.tensor([200])])
def test_encode_out_of_range(cmap, bad):
    with pytest.raises(MASCError, match="out of range \\[0, 128\\)"):
        cmap.encode(bad)


@pytest.mark.parametrize("bad", [np.array([32]), torch.tensor([-3])])
def test_decode_out_of_range(cmap, bad):
    with pytest.raises(MASCError, match="cluster id .* out of range \\[0, 32\\)"):
        cmap.decode(bad)


def test_float_ids_refused(cmap):
    with pytest.raises(MASCError, match="integer"):
        cmap.encode(np.array([1.0]))
    with pytest.raises(MASCError, match="integer"):
        cmap.decode(torch.tensor([1.0]))


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "codebook,match",
    [
        (np.array([[0.0, np.nan], [1.0, 2.0], [3, 4]]), "NaN or inf.*token ids 0"),
        (np.array([[0.0, 1.0], [np.inf, 2.0], [3, 4]]), "NaN or inf.*token ids 1"),
        (np.array([[0.0, 1.0], [1e39, 2.0], [3, 4]]), "beyond float32's range.*token ids 1"),  # finite in float64 only
        (np.zeros((4, 2, 2)), "must be 2-D"),
        (np.zeros(5), "must be 2-D"),
        (np.zeros((1, 4)), "at least 2 tokens"),
        (np.array([["a", "b"], ["c", "d"]]), "dtype"),
    ],
)
def test_bad_codebooks(codebook, match):
    with pytest.raises(CodebookError, match=match):
        build_cluster_map(codebook, 1)


@pytest.mark.parametrize(
    "k,match", [(0, "at least 1"), (-2, "at least 1"), (11, "larger than the number of tokens N=10"), (2.0, "pass k=2"), ("3", "integer"), (2.5, "integer")]
)
def test_bad_k(k, match):
    with pytest.raises(MASCError, match=match):
        build_cluster_map(np.random.default_rng(0).standard_normal((10, 2)), k)


def test_cut_without_tree():
    cmap = build_cluster_map(np.random.default_rng(0).standard_normal((20, 2)), 4, method="random", compute_quality=False)
    with pytest.raises(MASCError, match="no merge tree"):
        cmap.cut(3)


def test_fingerprint_is_source_independent(codebook):
    fp = codebook_fingerprint(codebook)
    assert fp == codebook_fingerprint(torch.from_numpy(codebook)) == codebook_fingerprint(codebook.astype(np.float64))
    assert fp != codebook_fingerprint(codebook[::-1])


def test_map_refuses_a_foreign_codebook(cmap, codebook):
    cmap.check_codebook(codebook)
    with pytest.raises(ClusterMapMismatchError, match="N=128 tokens but the codebook has 127"):
        cmap.check_codebook(codebook[:127])
    other = codebook.copy()
    other[0, 0] += 1e-3
    with pytest.raises(ClusterMapMismatchError, match="built from codebook"):
        cmap.check_codebook(other)
    with pytest.raises(ClusterMapMismatchError, match="k=32 clusters but the model expects 64"):
        check_cluster_map(cmap, num_clusters=64, what="the model")
    check_cluster_map(cmap, num_tokens=128, num_clusters=32, fingerprint=cmap.fingerprint, codebook_fingerprint=cmap.codebook_fingerprint)
    # same codebook and k, another partition: a model trained on one refuses the other
    kmeans = build_cluster_map(codebook, 32, method="kmeans", compute_quality=False)
    assert kmeans.codebook_fingerprint == cmap.codebook_fingerprint and kmeans.fingerprint != cmap.fingerprint
    with pytest.raises(ClusterMapMismatchError, match="trained on cluster map"):
        check_cluster_map(kmeans, num_tokens=128, num_clusters=32, fingerprint=cmap.fingerprint, what="the model")


# ---------------------------------------------------------------- save / load
def test_round_trip_offline(cmap, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = cmap.save_pretrained(tmp_path / "map")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "cluster_map.safetensors", "cluster_map_config.json"]
    loaded = MASCClusterMap.from_pretrained(str(out))
    assert loaded == cmap and loaded.tree.dtype == np.float64
    assert loaded.quality == pytest.approx(cmap.quality)
    fine = np.arange(128)
    assert np.array_equal(loaded.encode(fine), cmap.encode(fine))
    coarse = torch.arange(32).repeat(4)
    assert torch.equal(loaded.decode(coarse, generator=11), cmap.decode(coarse, generator=11))
    config = json.loads((out / "cluster_map_config.json").read_text())
    assert config["num_tokens"] == 128 and config["num_clusters"] == 32 and config["codebook_dim"] == 8
    assert config["method"] == "masc" and config["source_tokenizer"] == "unit-test"
    assert config["codebook_fingerprint"] == cmap.codebook_fingerprint and config["masc_hf_version"] == masc_hf.__version__
    card = (out / "README.md").read_text()
    assert "N=128 -> k=32" in card and "expected_replacement_distance" in card and "from_pretrained" in card


def test_saving_twice_is_byte_identical(cmap, tmp_path):
    a = cmap.save_pretrained(tmp_path / "a")
    b = cmap.save_pretrained(tmp_path / "b")
    for name in ("cluster_map.safetensors", "cluster_map_config.json"):
        assert (a / name).read_bytes() == (b / name).read_bytes()
    cmap.save_pretrained(a)  # overwriting an existing map works
    assert MASCClusterMap.from_pretrained(a) == cmap


def test_interrupted_save_leaves_nothing(cmap, tmp_path, monkeypatch):
    import safetensors.numpy

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.numpy, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        cmap.save_pretrained(tmp_path / "map")
    assert list(tmp_path.iterdir()) == []


def test_interrupted_overwrite_keeps_old_map(cmap, tmp_path, monkeypatch):
    out = cmap.save_pretrained(tmp_path / "map")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    monkeypatch.setattr(MASCClusterMap, "model_card", lambda self: (_ for _ in ()).throw(RuntimeError("disk full")))
    with pytest.raises(RuntimeError, match="disk full"):
        cmap.cut(8).save_pretrained(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["map"]


def test_save_refuses_foreign_directory(cmap, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ClusterMapError, match="not part of a cluster map.*notes.txt"):
        cmap.save_pretrained(tmp_path)
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.fixture
def saved(cmap, tmp_path):
    return cmap.save_pretrained(tmp_path / "map")


def test_missing_file(saved):
    (saved / "cluster_map.safetensors").unlink()
    with pytest.raises(ClusterMapError, match="missing cluster_map.safetensors"):
        MASCClusterMap.from_pretrained(saved)


def test_corrupt_tensors(saved):
    path = saved / "cluster_map.safetensors"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ClusterMapError, match="sha256 differs"):
        MASCClusterMap.from_pretrained(saved)


def test_corrupt_config(saved):
    (saved / "cluster_map_config.json").write_text("{not json")
    with pytest.raises(ClusterMapError, match="not valid JSON"):
        MASCClusterMap.from_pretrained(saved)


def test_mismatched_files(cmap, saved, tmp_path):
    other = build_cluster_map(np.random.default_rng(9).standard_normal((64, 4)), 8).save_pretrained(tmp_path / "other")
    os.replace(other / "cluster_map.safetensors", saved / "cluster_map.safetensors")
    with pytest.raises(ClusterMapError, match="different saves or one is corrupt"):
        MASCClusterMap.from_pretrained(saved)
    config = json.loads((saved / "cluster_map_config.json").read_text())
    del config["tensors_sha256"]
    (saved / "cluster_map_config.json").write_text(json.dumps(config))
    with pytest.raises(ClusterMapError, match="do not belong together"):
        MASCClusterMap.from_pretrained(saved)


@pytest.mark.parametrize("field", ["tensors_sha256", "fingerprint"])
def test_a_config_without_its_integrity_fields_is_refused(saved, field):
    config = json.loads((saved / "cluster_map_config.json").read_text())
    del config[field]  # every save writes both: a config without one was edited or made elsewhere
    (saved / "cluster_map_config.json").write_text(json.dumps(config))
    with pytest.raises(ClusterMapError, match=f"lacks '{field}'.*cannot be checked"):
        MASCClusterMap.from_pretrained(saved)


def test_saved_maps_get_the_usual_permissions(cmap, tmp_path):
    import stat

    old = os.umask(0o022)
    try:
        out = cmap.save_pretrained(tmp_path / "map")
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == dict.fromkeys(
        ["README.md", "cluster_map.safetensors", "cluster_map_config.json"], 0o644
    )


def test_tree_and_mapping_must_agree(cmap):
    with pytest.raises(ClusterMapError, match="disagree"):
        MASCClusterMap(np.roll(cmap.mapping, 1), tree=cmap.tree)


def test_unknown_repo_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ClusterMapError, match="not in the Hub cache|no cluster map"):
        MASCClusterMap.from_pretrained("masc-hf/does-not-exist")


def test_push_to_hub_uses_the_hub_api(cmap, monkeypatch):
    import huggingface_hub

    calls = {}

    class FakeApi:
        def __init__(self, token=None):
            calls["token"] = token

        def create_repo(self, repo_id, **kwargs):
            calls["create"] = (repo_id, kwargs)
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            calls["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            calls["loaded"] = MASCClusterMap.from_pretrained(folder_path)
            return "commit"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert cmap.push_to_hub("org/map", token="t") == "commit"
    assert calls["create"][0] == "org/map" and calls["token"] == "t"
    assert calls["files"] == ["README.md", "cluster_map.safetensors", "cluster_map_config.json"]
    assert calls["loaded"] == cmap


# ---------------------------------------------------------------- diffusers component
def test_is_a_diffusers_pipeline_component(cmap, tmp_path):
    from diffusers import DiffusionPipeline

    class MapOnlyPipeline(DiffusionPipeline):
        def __init__(self, cluster_map):
            super().__init__()
            self.register_modules(cluster_map=cluster_map)

    pipe = MapOnlyPipeline(cluster_map=cmap)
    pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["cluster_map"] == ["masc_hf.clustering.cluster_map", "MASCClusterMap"]
    loaded = MapOnlyPipeline.from_pretrained(tmp_path / "pipe")
    assert isinstance(loaded.cluster_map, MASCClusterMap) and loaded.cluster_map == cmap
