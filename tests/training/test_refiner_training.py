"""Training the MASC refinement network through train(): frozen (the paper's) and joint, with exact resume."""

import numpy as np
import pytest
import torch

from masc_hf import build_cluster_map
from masc_hf.data import CodeShardDataset
from masc_hf.training import ARTrainingArguments, model_for_codes, train


@pytest.fixture
def masc_parts(codes_dir, model_config_file):
    cmap = build_cluster_map(np.random.default_rng(0).standard_normal((32, 4)), 8, compute_quality=False)
    cmap.codebook_fingerprint = "f" * 64  # the synthetic shards' tokenizer

    def make(out, mode="frozen", with_fine_ids=True, **kw):
        from masc_hf.models.refiner import MASCRefiner, MASCRefinerConfig

        base = dict(output_dir=str(out), global_batch_size=16, max_steps=6, learning_rate=3e-3, mixed_precision="no",
                    checkpoint_every=2, log_every=1, progress=False, log_with=None, seed=0, refiner_mode=mode)
        args = ARTrainingArguments(**{**base, **kw})
        dataset = CodeShardDataset(codes_dir, cluster_map=cmap, seed=0, with_fine_ids=with_fine_ids)
        model = model_for_codes(dataset, model_config=model_config_file, cluster_map=cmap, seed=0)
        torch.manual_seed(1)
        refiner = MASCRefiner(MASCRefinerConfig.for_backbone(model, hidden_size=16, num_attention_heads=2), cluster_map=cmap)
        return dict(model=model, train_dataset=dataset, args=args, cluster_map=cmap, refiner=refiner)

    return make


def test_frozen_mode_trains_only_the_refiner(masc_parts, tmp_path):
    parts = masc_parts(tmp_path / "run")
    before = {k: v.clone() for k, v in parts["model"].state_dict().items()}
    output = train(**parts)
    history = output.history
    assert history[-1]["refiner_loss"] < history[0]["refiner_loss"]  # it learns the token inside the true cluster
    assert all(r["loss"] == pytest.approx(r["refiner_loss"]) for r in history)  # frozen: the loss is the refiner's
    after = output.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the MASC model did not move
    from masc_hf.models.refiner import MASCRefiner

    reloaded = MASCRefiner.from_pretrained(output.refiner_dir)
    assert all(torch.equal(a, b) for a, b in zip(reloaded.state_dict().values(), output.refiner.state_dict().values()))


def test_joint_mode_and_exact_resume(masc_parts, tmp_path):
    straight = train(**masc_parts(tmp_path / "a", mode="joint", refiner_loss_weight=0.5))
    assert all(r["loss"] == pytest.approx(r["coarse_loss"] + 0.5 * r["refiner_loss"], rel=1e-5) for r in straight.history)
    train(**masc_parts(tmp_path / "b", mode="joint", refiner_loss_weight=0.5))
    import shutil

    shutil.rmtree(tmp_path / "b" / "checkpoint-6")
    resumed = train(**masc_parts(tmp_path / "b", mode="joint", refiner_loss_weight=0.5, resume="latest"))
    timeless = lambda history: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in history]  # noqa: E731
    assert resumed.loss == straight.loss and timeless(resumed.history) == timeless(straight.history)
    assert all(torch.equal(a, b) for a, b in zip(resumed.refiner.state_dict().values(), straight.refiner.state_dict().values()))


def test_refiner_training_bad_input(masc_parts, tmp_path):
    from masc_hf.training.trainer import TrainingError

    with pytest.raises(TrainingError, match="with_fine_ids=True"):
        train(**masc_parts(tmp_path / "x", with_fine_ids=False))
    with pytest.raises(TrainingError, match="refiner_mode"):
        masc_parts(tmp_path / "y", mode="both")
    with pytest.raises(TrainingError, match="refiner_loss_weight"):
        masc_parts(tmp_path / "z", mode="joint", refiner_loss_weight=-1.0)


def test_the_recipe_trains_a_refiner_on_a_trained_masc_model(masc_parts, tmp_path, model_config_file, codes_dir):
    """recipes/train.py: a MASC model first, then its refiner on it (frozen), as the paper."""
    import subprocess
    import sys
    from pathlib import Path

    parts = masc_parts(tmp_path / "masc", with_fine_ids=False)
    parts["cluster_map"].save_pretrained(tmp_path / "map")
    train(**{k: v for k, v in parts.items() if k != "refiner"})  # the MASC model alone, first
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "train.py"
    cmd = [
        sys.executable, str(recipe), "--codes_dir", str(codes_dir), "--output_dir", str(tmp_path / "refiner-run"), "--preset", "",
        "--init_from", str(tmp_path / "masc" / "model"), "--cluster_map", str(tmp_path / "map"), "--train_refiner",
        "--refiner_width", "16", "--refiner_heads", "2", "--global_batch_size", "16", "--max_steps", "2", "--learning_rate", "3e-3",
        "--mixed_precision", "no", "--checkpoint_every", "2", "--log_every", "1", "--no_progress", "--log_with", "", "--seed", "0",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    from masc_hf.models.refiner import MASCRefiner

    refiner = MASCRefiner.from_pretrained(tmp_path / "refiner-run" / "refiner")
    assert refiner.config.hidden_size == 16 and refiner.config.cluster_map_fingerprint == parts["cluster_map"].fingerprint
