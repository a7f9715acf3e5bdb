import json

import numpy as np
import pytest

from masc_hf.data.code_shards import CodeShardManifest, CodeShardWriter

TINY_MODEL = {
    "hidden_size": 32,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "multiple_of": 32,
    "token_dropout": 0.1,
    "resid_dropout": 0.1,
    "ffn_dropout": 0.1,
    "initializer_range": 0.02,
}


def write_codes(directory, *, num_examples=96, num_tokens=32, grid=4, num_classes=4, seed=0, shard_size=40):
    """Synthetic code shards whose tokens depend on the class (so a model can learn them)."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num_examples)
    positions = np.arange(grid * grid)
    codes = (labels[:, None] * 5 + positions[None, :] * 3 + rng.integers(0, 2, size=(num_examples, grid * grid))) % num_tokens
    manifest = CodeShardManifest(
        tokenizer_fingerprint="f" * 64, num_tokens=num_tokens, image_size=grid * 4, grid_size=(grid, grid),
        class_names=[f"class{i}" for i in range(num_classes)], shard_size=shard_size,
    )
    writer = CodeShardWriter(directory, manifest)
    index = 0
    for start in range(0, num_examples, shard_size):
        part = slice(start, start + shard_size)
        writer.write_shard(index, codes[part][:, None, :], labels[part], num_raw=len(labels[part]))
        index += 1
    writer.finish(index)
    return codes, labels


@pytest.fixture
def codes_dir(tmp_path):
    write_codes(tmp_path / "codes")
    return tmp_path / "codes"


@pytest.fixture
def model_config_file(tmp_path):
    path = tmp_path / "model.json"
    path.write_text(json.dumps(TINY_MODEL))
    return path
