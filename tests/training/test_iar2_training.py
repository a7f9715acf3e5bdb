"""IAR2 through the same train() and recipes/train.py: two losses, two entropies, exact resume, its pipeline."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from masc_hf.data import CodeShardDataset
from masc_hf.data.code_shards import CodeShardManifest, CodeShardWriter
from masc_hf.errors import MASCError
from masc_hf.training import ARTrainingArguments, model_for_codes, train
from masc_hf.training.trainer import TrainingError

REPO = Path(__file__).resolve().parents[2]
TINY_LLAMAGEN = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "multiple_of": 32}
TINY_IAR2 = {"hidden_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4, "head_layers": 1, "multiple_of": 32,
             "token_dropout": 0.1, "resid_dropout": 0.1, "ffn_dropout": 0.1}


def write_dual_codes(directory, *, num_examples=64, semantic=8, detail=16, grid=4, num_classes=4, seed=0, fingerprint="d" * 64):
    """Synthetic dual-codebook shards: semantic ids follow the class, detail ids the semantic id."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=num_examples)
    positions = np.arange(grid * grid)
    semantic_ids = (labels[:, None] * 3 + positions[None, :]) % semantic
    detail_ids = (semantic_ids * 2 + rng.integers(0, 2, size=semantic_ids.shape)) % detail
    manifest = CodeShardManifest(
        tokenizer_fingerprint=fingerprint, num_tokens=semantic, num_detail_tokens=detail, image_size=grid * 4,
        grid_size=(grid, grid), class_names=[f"class{i}" for i in range(num_classes)], shard_size=32,
    )
    writer = CodeShardWriter(directory, manifest)
    for index, start in enumerate(range(0, num_examples, 32)):
        part = slice(start, start + 32)
        writer.write_shard(index, semantic_ids[part][:, None], labels[part], num_raw=len(labels[part]), detail_ids=detail_ids[part][:, None])
    writer.finish((num_examples + 31) // 32)
    return semantic_ids, detail_ids, labels


@pytest.fixture
def dual_codes(tmp_path):
    write_dual_codes(tmp_path / "dual")
    return tmp_path / "dual"


def run_args(codes, out, **kw):
    base = dict(output_dir=str(out), global_batch_size=16, max_steps=6, learning_rate=3e-3, mixed_precision="no",
                checkpoint_every=3, log_every=1, progress=False, log_with=None, seed=0)
    args = ARTrainingArguments(**{**base, **kw})
    dataset = CodeShardDataset(codes, seed=args.seed)
    return dict(model=model_for_codes(dataset, model_config=dict(TINY_IAR2), seed=args.seed), train_dataset=dataset, args=args)


def test_iar2_trains_with_both_losses_and_entropies(dual_codes, tmp_path):
    run = run_args(dual_codes, tmp_path / "run", max_steps=30, checkpoint_every=30, warmup_steps=2)
    model = run["model"]
    assert type(model).__name__ == "IAR2ForImageGeneration"
    assert (model.config.semantic_vocab_size, model.config.detail_vocab_size, model.config.block_size) == (8, 16, 16)
    assert model.config.tokenizer_fingerprint == "d" * 64 and model.config.id2label[2] == "class2"
    output = train(**run)
    history = output.history
    assert len(history) == 30
    first, last = history[0], history[-1]
    for key in ("semantic_loss", "detail_loss", "entropy_semantic", "entropy_semantic_normalized", "entropy_detail", "entropy_detail_normalized"):
        assert key in last
    assert last["loss"] == pytest.approx(last["semantic_loss"] + last["detail_loss"], rel=1e-5)  # w = 1
    assert first["semantic_loss"] == pytest.approx(np.log(8), abs=0.05)  # zero-initialised heads: uniform at first
    assert last["semantic_loss"] < first["semantic_loss"] - 0.3 and last["detail_loss"] < first["detail_loss"] - 0.3
    saved = load_file(str(tmp_path / "run" / "model" / "model.safetensors"))
    assert "head.detail_out.2.weight" in saved


def test_resume_continues_exactly(dual_codes, tmp_path):
    straight = train(**run_args(dual_codes, tmp_path / "a"))
    first = train(**run_args(dual_codes, tmp_path / "b"))
    import shutil

    shutil.rmtree(tmp_path / "b" / "checkpoint-6")
    resumed = train(**run_args(dual_codes, tmp_path / "b", resume="latest"))
    assert resumed.global_step == 6 and resumed.loss == straight.loss == first.loss
    def timeless(history):
        return [{k: v for k, v in record.items() if k != "tokens_per_s"} for record in history]

    assert timeless(resumed.history) == timeless(straight.history)
    a, b = load_file(str(tmp_path / "a" / "model" / "model.safetensors")), load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_training_writes_an_iar2_pipeline(tmp_path, tiny_dual_vq):
    from masc_hf import IAR2Pipeline
    from masc_hf.vq import tokenizer_fingerprint

    vq = tiny_dual_vq(semantic=8, detail=16)
    write_dual_codes(tmp_path / "codes", fingerprint=tokenizer_fingerprint(vq))
    output = train(**run_args(tmp_path / "codes", tmp_path / "run", max_steps=2), vqvae=vq)
    pipe = IAR2Pipeline.from_pretrained(output.pipeline_dir)
    assert pipe.id2label[3] == "class3"
    assert pipe(["class1"], output_type="np", generator=torch.Generator().manual_seed(0)).images.shape == (1, 8, 8, 3)  # 4x4 ids, 2x up
    other = tiny_dual_vq(semantic=8, detail=16, seed=1)
    with pytest.raises(MASCError, match="fingerprints differ"):
        train(**run_args(tmp_path / "codes", tmp_path / "run2", max_steps=2), vqvae=other)


def test_mismatched_models_and_codes_are_refused(dual_codes, codes_dir, tmp_path):
    dual = CodeShardDataset(dual_codes)
    with pytest.raises(MASCError, match="LlamaGen/MASC training"):
        model_for_codes(dual, model_config=dict(TINY_LLAMAGEN), kind="llamagen")
    single = CodeShardDataset(codes_dir)
    with pytest.raises(TrainingError, match="these codes hold one id per position"):
        model_for_codes(single, model_config=dict(TINY_IAR2), kind="iar2")
    run = run_args(dual_codes, tmp_path / "x")
    other = write_dual_codes(tmp_path / "other", semantic=4)
    del other
    with pytest.raises(TrainingError, match="4 semantic x 16 detail codes but the model predicts 8 x 16"):
        train(**{**run, "train_dataset": CodeShardDataset(tmp_path / "other")})
    with pytest.raises(TrainingError, match="unknown key"):
        model_for_codes(dual, model_config={"hidden_sise": 48}, kind="iar2")


@pytest.mark.slow  # a fresh interpreter imports torch, transformers and accelerate
def test_recipe_trains_iar2(dual_codes, tmp_path):
    config = tmp_path / "iar2.json"
    config.write_text(json.dumps(TINY_IAR2))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(REPO / "recipes" / "train.py"), "--model", "iar2", "--codes_dir", str(dual_codes), "--output_dir",
               str(tmp_path / "run"), "--model_config", str(config), "--max_steps", "2", "--global_batch_size", "8", "--progress", "false",
               "--mixed_precision", "no", "--log_every", "1"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert len(history) == 2 and "detail_loss" in history[-1]
    bad = subprocess.run([*command[:3], "llamagen", *command[4:]], env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "train.py: error:" in bad.stderr and "Traceback" not in bad.stderr
