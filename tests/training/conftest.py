import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from masc_hf.data.code_shards import CodeShardManifest, CodeShardWriter

REPO = Path(__file__).resolve().parents[2]

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


@pytest.fixture
def tiny_run(codes_dir, model_config_file):
    """``tiny_run(out, cluster_map=None, model_config=..., class_dropout_prob=0.1, **args)``: the keyword
    arguments of ``train`` for a few steps of the tiny model on ``codes_dir``, built as recipes/train.py
    builds them (paths -> objects)."""
    from masc_hf.data import CodeShardDataset
    from masc_hf.training import ARTrainingArguments, model_for_codes

    def make(out, cluster_map=None, model_config=model_config_file, class_dropout_prob=0.1, codes=codes_dir, **kw):
        base = dict(
            output_dir=str(out), global_batch_size=16, max_steps=4, learning_rate=3e-3, mixed_precision="no",
            checkpoint_every=2, log_every=1, progress=False, log_with=None, seed=0,
        )
        args = ARTrainingArguments(**{**base, **kw})
        dataset = CodeShardDataset(codes, cluster_map=cluster_map, seed=args.seed)
        model = model_for_codes(
            dataset, model_config=model_config, cluster_map=cluster_map, class_dropout_prob=class_dropout_prob, seed=args.seed
        )
        return dict(model=model, train_dataset=dataset, args=args, cluster_map=cluster_map)

    return make


@pytest.fixture
def run_recipe(capsys):
    """``run_recipe(argv)``: recipes/train.py's main(argv) in this process -> (exit code, stderr)."""
    spec = importlib.util.spec_from_file_location("train_recipe", REPO / "recipes" / "train.py")
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)

    def run(argv):
        code = recipe.main([str(a) for a in argv])
        return code, capsys.readouterr().err

    return run


@pytest.fixture
def tiny_vqmodel():
    """``tiny_vqmodel(num_codes=32, seed=0)``: a random diffusers VQModel with ``num_codes`` codes (a
    tokenizer other than the synthetic shards' "f" * 64)."""
    import torch
    from diffusers import VQModel

    def make(num_codes=32, seed=0):
        torch.manual_seed(seed)
        return VQModel(
            in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(8, 16), layers_per_block=1, latent_channels=4, num_vq_embeddings=num_codes, vq_embed_dim=4,
            norm_num_groups=4, sample_size=8,
        ).eval()

    return make
