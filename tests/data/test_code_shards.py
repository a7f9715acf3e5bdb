"""Code shards on disk: round trip, manifest, resume checks, the dataset, cluster-map checks."""

import json
import pickle

import numpy as np
import pytest
import torch

from masc_hf.data.code_shards import (
    CodeShardDataset,
    CodeShardManifest,
    CodeShardWriter,
    codes_dtype_for,
    finalize_code_shards,
    read_safetensors_header,
)
from masc_hf.errors import ClusterMapMismatchError, DataError

N_TOKENS, A, L = 40, 3, 6


def settings(**overrides):
    fields = dict(
        tokenizer_fingerprint="f" * 64,
        num_tokens=N_TOKENS,
        image_size=24,
        grid_size=(2, 3),
        augment="ten-crop-like",
        num_augmentations=A,
        codes_dtype=codes_dtype_for(N_TOKENS),
        shard_size=4,
        world_size=1,
        source="generated",
        split="train",
        class_names=["x", "y"],
    )
    return CodeShardManifest(**{**fields, **overrides})


def shard_data(n, start):
    rng = np.random.default_rng(start)
    return rng.integers(0, N_TOKENS, (n, A, L)), np.arange(start, start + n)


def write_two_shards(directory):
    writer = CodeShardWriter(directory, settings())
    c0, l0 = shard_data(4, 0)
    c1, l1 = shard_data(3, 4)
    writer.write_shard(0, c0, l0, num_raw=4)
    writer.write_shard(1, c1, l1, num_raw=4, num_skipped=1, stream_state={"pos": 8})
    manifest = writer.finish(2)
    return manifest, np.concatenate([c0, c1]), np.concatenate([l0, l1])


def test_round_trip_and_manifest(tmp_path):
    manifest, codes, labels = write_two_shards(tmp_path)
    assert manifest.complete and manifest.num_examples == 7 and manifest.num_shards == 2 and manifest.num_skipped == 1
    on_disk = json.loads((tmp_path / "manifest.json").read_text())
    assert on_disk["tokenizer_fingerprint"] == "f" * 64 and on_disk["grid_size"] == [2, 3] and on_disk["seq_len"] == 6
    assert on_disk["image_size"] == 24 and on_disk["num_skipped"] == 1 and on_disk["class_names"] == ["x", "y"]
    header, _ = read_safetensors_header(tmp_path / manifest.shards[1]["file"])
    assert header["codes"]["dtype"] == "I16" and header["codes"]["shape"] == [3, A, L] and header["labels"]["dtype"] == "I64"
    assert not list(tmp_path.rglob(".*tmp*"))  # no temporary files left
    for mmap in (True, False):
        for view in range(A):
            dataset = CodeShardDataset(tmp_path, augmentation=view, mmap=mmap)
            assert len(dataset) == 7 and dataset.num_augmentations == A and dataset.seq_len == L
            for i in range(7):
                ids, label = dataset[i]
                assert ids.dtype == torch.long and ids.tolist() == codes[i, view].tolist() and int(label) == labels[i]
    assert dataset[-1][1] == 6
    with pytest.raises(IndexError):
        dataset[7]


def test_random_views_are_reproducible_and_change_with_the_epoch(tmp_path):
    _, codes, _ = write_two_shards(tmp_path)

    def views(dataset):
        return [next(v for v in range(A) if dataset[i][0].tolist() == codes[i, v].tolist()) for i in range(7)]

    first = views(CodeShardDataset(tmp_path, seed=3))
    assert views(CodeShardDataset(tmp_path, seed=3)) == first
    dataset = CodeShardDataset(tmp_path, seed=3)
    epochs = {tuple(first)}
    for epoch in range(1, 6):
        dataset.set_epoch(epoch)
        epochs.add(tuple(views(dataset)))
    assert len(epochs) > 1
    # a pickled copy (a DataLoader worker) draws the same views
    dataset.set_epoch(0)
    dataset[0]
    assert views(pickle.loads(pickle.dumps(dataset))) == first
    loader = torch.utils.data.DataLoader(CodeShardDataset(tmp_path, seed=3), batch_size=7, num_workers=2)
    (batch_codes, batch_labels), = list(loader)
    assert batch_codes.shape == (7, L) and batch_labels.tolist() == list(range(7))
    assert [codes[i, first[i]].tolist() for i in range(7)] == batch_codes.tolist()


def test_incomplete_and_missing_directories(tmp_path):
    writer = CodeShardWriter(tmp_path, settings(world_size=2), rank=0)
    c, l = shard_data(2, 0)
    writer.write_shard(0, c, l, num_raw=2)
    assert writer.finish(1) is None  # rank 1 has not finished
    with pytest.raises(DataError, match="incomplete"):
        CodeShardDataset(tmp_path)
    with pytest.raises(DataError, match="process 1 of 2 has not finished"):
        finalize_code_shards(tmp_path)
    with pytest.raises(DataError, match="no manifest.json"):
        CodeShardDataset(tmp_path / "elsewhere")


def test_resuming_with_other_settings_names_the_difference(tmp_path):
    write_two_shards(tmp_path)
    CodeShardWriter(tmp_path, settings())  # same settings: fine
    with pytest.raises(DataError, match=r"image_size: 24 vs 32.*new directory"):
        CodeShardWriter(tmp_path, settings(image_size=32))
    with pytest.raises(DataError, match="world_size: 1 vs 2"):
        CodeShardWriter(tmp_path, settings(world_size=2))


def test_writer_checks_shapes_and_ids(tmp_path):
    writer = CodeShardWriter(tmp_path, settings())
    with pytest.raises(DataError, match=r"codes must be \[n, A, L\]"):
        writer.write_shard(0, np.zeros((2, L), np.int64), np.zeros(2), num_raw=2)
    with pytest.raises(DataError, match=r"token ids must lie in \[0, 40\)"):
        writer.write_shard(0, np.full((1, A, L), 40), np.zeros(1), num_raw=1)
    assert codes_dtype_for(16384) == "int16" and codes_dtype_for(32768) == "int16" and codes_dtype_for(32769) == "int32"
    with pytest.raises(DataError, match="int16 cannot hold"):
        settings(num_tokens=70000, codes_dtype="int16")


def test_cluster_map_is_checked_against_the_manifest_fingerprint(tmp_path):
    from masc_hf.clustering import build_cluster_map, codebook_fingerprint

    codebook = np.random.default_rng(0).normal(size=(N_TOKENS, 4))
    writer = CodeShardWriter(tmp_path, settings(tokenizer_fingerprint=codebook_fingerprint(codebook)))
    c, l = shard_data(5, 0)
    writer.write_shard(0, c, l, num_raw=5)
    writer.finish(1)

    right = build_cluster_map(codebook, 4, compute_quality=False)
    dataset = CodeShardDataset(tmp_path, right, augmentation=1)
    assert dataset.vocab_size == 4
    for i in range(5):
        assert dataset[i][0].tolist() == right.encode(torch.as_tensor(c[i, 1])).tolist()

    other_codebook = np.random.default_rng(1).normal(size=(N_TOKENS, 4))
    wrong = build_cluster_map(other_codebook, 4, compute_quality=False)
    with pytest.raises(ClusterMapMismatchError, match=r"built from codebook .* but the code shards in .* uses codebook"):
        CodeShardDataset(tmp_path, wrong)
    wrong_size = build_cluster_map(np.random.default_rng(1).normal(size=(N_TOKENS + 1, 4)), 4, compute_quality=False)
    with pytest.raises(ClusterMapMismatchError, match="N=41 tokens"):
        CodeShardDataset(tmp_path, wrong_size)


def test_ids_outside_the_codebook_are_refused_where_they_enter(tmp_path):
    """The trainer does not range-check ids on every step (a host sync): the dataset does, per example."""
    from masc_hf.data.code_shards import CodeShardDataset, CodeShardManifest, CodeShardWriter
    from masc_hf.errors import DataError

    manifest = CodeShardManifest(tokenizer_fingerprint="f" * 64, num_tokens=8, image_size=8, grid_size=(2, 2), shard_size=4)
    writer = CodeShardWriter(tmp_path / "codes", manifest)
    codes = np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.int16)[:, None, :]
    writer.write_shard(0, codes, np.array([0, 1]), num_raw=2)
    writer.finish(1)
    dataset = CodeShardDataset(tmp_path / "codes", seed=0)
    dataset.manifest.num_tokens = 6  # shards that no longer fit their manifest (edited or corrupt files)
    assert dataset[0][0].tolist() == [0, 1, 2, 3]
    with pytest.raises(DataError, match=r"token ids in \[4, 7\] but the tokenizer has 6 codes"):
        dataset[1]


def test_with_fine_ids_returns_both_vocabularies(tmp_path):
    """What a MASC refiner trains on: the cluster ids the backbone reads and the codebook ids it must recover."""
    import masc_hf
    from masc_hf.data.code_shards import CodeShardDataset, CodeShardManifest, CodeShardWriter

    manifest = CodeShardManifest(tokenizer_fingerprint="f" * 64, num_tokens=8, image_size=8, grid_size=(2, 2), shard_size=4)
    writer = CodeShardWriter(tmp_path / "codes", manifest)
    writer.write_shard(0, np.array([[0, 1, 2, 3], [4, 5, 6, 7]], dtype=np.int16)[:, None, :], np.array([0, 1]), num_raw=2)
    writer.finish(1)
    cmap = masc_hf.build_cluster_map(np.random.default_rng(0).normal(size=(8, 2)), 3, compute_quality=False)
    cmap.codebook_fingerprint = "f" * 64
    coarse, label, fine = CodeShardDataset(tmp_path / "codes", cluster_map=cmap, seed=0, with_fine_ids=True)[1]
    assert fine.tolist() == [4, 5, 6, 7] and torch.equal(coarse, cmap.encode(fine)) and int(label) == 1
    with pytest.raises(DataError, match="needs a cluster_map"):
        CodeShardDataset(tmp_path / "codes", seed=0, with_fine_ids=True)
