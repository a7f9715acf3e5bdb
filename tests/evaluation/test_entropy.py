"""Teacher-forced prediction entropy per position, against a direct computation on tiny random models."""

import math

import numpy as np
import pytest
import torch

from masc_hf import build_cluster_map
from masc_hf.data.code_shards import CodeShardManifest, CodeShardWriter
from masc_hf.errors import ClusterMapMismatchError, DataError
from masc_hf.evaluation.entropy import entropy_per_position
from masc_hf.models import LlamaGenConfig, LlamaGenForImageGeneration
from masc_hf.training.trainer import prediction_entropy

N, K, L, CLASSES = 32, 8, 16, 4
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, multiple_of=32, num_classes=CLASSES, block_size=L)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, N, size=(20, L))
    labels = rng.integers(0, CLASSES, size=20)
    cluster_map = build_cluster_map(rng.normal(size=(N, 4)), K, compute_quality=False)
    return codes, labels, cluster_map


@pytest.fixture(scope="module")
def codes_dir(data, tmp_path_factory):
    codes, labels, cluster_map = data
    directory = tmp_path_factory.mktemp("codes")
    manifest = CodeShardManifest(
        tokenizer_fingerprint=cluster_map.codebook_fingerprint, num_tokens=N, image_size=16, grid_size=(4, 4), shard_size=8
    )
    writer = CodeShardWriter(directory, manifest)
    for index, start in enumerate(range(0, 20, 8)):
        part = slice(start, start + 8)
        writer.write_shard(index, codes[part][:, None, :], labels[part], num_raw=len(labels[part]))
    writer.finish(3)
    return directory


def model_for(cluster_map=None, seed=0):
    """A random model whose predictions differ by position (LlamaGen zero-initialises the head: uniform)."""
    torch.manual_seed(seed)
    if cluster_map is None:
        config = LlamaGenConfig(vocab_size=N, **TINY)
    else:
        config = LlamaGenConfig(vocab_size=K, fine_vocab_size=N, cluster_map_fingerprint=cluster_map.fingerprint, **TINY)
    model = LlamaGenForImageGeneration(config)
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, 1.0)
    return model


def direct(model, ids, labels):
    with torch.no_grad():
        model.eval()
        logits = model(input_ids=ids[:, :-1], class_labels=labels).logits.double()
    p = logits.softmax(-1)
    return (-(p * p.log2()).sum(-1)).mean(0).numpy(), logits


def test_flat_model_matches_a_direct_computation(data):
    codes, labels, _ = data
    model = model_for().train()  # dropout on: the function must switch to eval and back
    result = entropy_per_position(model, (codes, labels), batch_size=6)
    assert model.training
    expected, logits = direct(model, torch.as_tensor(codes), torch.as_tensor(labels))
    assert result.per_position.shape == (L,) and result.num_examples == 20 and result.vocab_size == N
    np.testing.assert_allclose(result.per_position, expected, rtol=1e-5)
    mean, normalized = prediction_entropy(logits)  # what training logs over the same logits
    assert result.mean == pytest.approx(mean, rel=1e-5) and result.normalized == pytest.approx(normalized, rel=1e-5)
    assert result.normalized == pytest.approx(result.mean / math.log2(N))
    assert 0 < result.per_position.min() and result.per_position.max() < math.log2(N)
    assert result.per_position.std() > 0.01  # positions differ: a real per-position figure


def test_masc_model_on_code_shards_maps_fine_ids_to_clusters(data, codes_dir):
    codes, labels, cluster_map = data
    model = model_for(cluster_map)
    result = entropy_per_position(model, codes_dir, cluster_map, batch_size=7)
    expected, _ = direct(model, torch.as_tensor(cluster_map.encode(codes)), torch.as_tensor(labels))
    np.testing.assert_allclose(result.per_position, expected, rtol=1e-5)
    assert result.vocab_size == K and result.normalized == pytest.approx(result.mean / 3.0)
    # the same from tensors of fine ids with the map, and of cluster ids without it
    from_tensors = entropy_per_position(model, (torch.as_tensor(codes), torch.as_tensor(labels)), cluster_map)
    np.testing.assert_allclose(from_tensors.per_position, result.per_position, rtol=1e-6)
    first = entropy_per_position(model, (cluster_map.encode(codes), labels), max_examples=5)
    np.testing.assert_allclose(first.per_position, direct(model, torch.as_tensor(cluster_map.encode(codes[:5])), torch.as_tensor(labels[:5]))[0], rtol=1e-5)


def test_mismatches_fail_before_the_model_runs(data, codes_dir):
    codes, labels, cluster_map = data
    masc = model_for(cluster_map)
    with pytest.raises(ClusterMapMismatchError, match="pass the cluster map the model was trained with"):
        entropy_per_position(masc, codes_dir)
    other = build_cluster_map(np.random.default_rng(9).normal(size=(N, 4)), K, compute_quality=False)
    with pytest.raises(ClusterMapMismatchError, match="trained on cluster map"):
        entropy_per_position(masc, codes_dir, other)
    with pytest.raises(ClusterMapMismatchError, match="flat"):
        entropy_per_position(model_for(), codes_dir, cluster_map)
    with pytest.raises(DataError, match=r"vocabulary is \[0, 8\)"):
        entropy_per_position(masc, (codes, labels))  # fine ids without the map
    with pytest.raises(DataError, match="block_size is 16"):
        entropy_per_position(model_for(), (codes[:, :9], labels))
