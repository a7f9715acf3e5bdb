import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from masc_hf import MASCClusterMap, build_cluster_map
from masc_hf.data import CodeShardDataset
from masc_hf.training import ARTrainingArguments, latest_checkpoint, model_for_codes, prediction_entropy, train
from masc_hf.training.trainer import TrainingError

REPO = Path(__file__).resolve().parents[2]


def args_for(codes_dir, out, model_config_file, eval_fn=None, cluster_map=None, **kw):
    """A tiny run as recipes/train.py sets it up: paths -> objects -> train()."""
    base = dict(
        output_dir=str(out), global_batch_size=16, max_steps=12, learning_rate=3e-3, mixed_precision="no",
        checkpoint_every=4, log_every=2, progress=False, log_with=None, seed=0,
    )
    base.update(kw)
    args = ARTrainingArguments(**base)
    cmap = MASCClusterMap.from_pretrained(cluster_map) if cluster_map else None
    dataset = CodeShardDataset(codes_dir, cluster_map=cmap, seed=args.seed)
    model = model_for_codes(dataset, model_config=model_config_file, cluster_map=cmap, seed=args.seed)
    return dict(model=model, train_dataset=dataset, args=args, cluster_map=cmap, eval_fn=eval_fn)


def test_prediction_entropy_matches_definition():
    logits = torch.randn(3, 5, 7)
    p = logits.softmax(-1)
    h = float((-(p * p.log2()).sum(-1)).mean())
    assert prediction_entropy(logits) == pytest.approx((h, h / math.log2(7)), rel=1e-5)
    uniform = prediction_entropy(torch.zeros(2, 16))
    assert uniform == pytest.approx((4.0, 1.0))


def test_flat_training_learns_and_writes_a_model(codes_dir, tmp_path, model_config_file):
    summary = train(**args_for(codes_dir, tmp_path / "run", model_config_file, max_steps=30, checkpoint_every=10))
    history = summary["history"]
    assert summary["global_step"] == 30 and len(history) == 15
    assert history[-1]["loss"] < history[0]["loss"] - 0.5
    assert history[-1]["entropy_normalized"] < history[0]["entropy_normalized"]
    for key in ("lr", "grad_norm", "tokens_per_s", "entropy"):
        assert np.isfinite(history[-1][key])
    # cosine decay from the peak towards a tenth of it
    assert history[0]["lr"] <= 3e-3 and history[-1]["lr"] == pytest.approx(3e-4, rel=0.05)
    from transformers import AutoModel

    import masc_hf  # noqa: F401  (registers the model type)

    model = AutoModel.from_pretrained(summary["model_dir"])
    assert model.config.vocab_size == 32 and model.config.num_classes == 4 and model.config.id2label[1] == "class1"
    # two checkpoints kept (keep_checkpoints=2)
    assert sorted(p.name for p in (tmp_path / "run").glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30"]


def test_masc_training_predicts_cluster_ids(codes_dir, tmp_path, model_config_file):
    cmap = build_cluster_map(np.random.default_rng(0).standard_normal((32, 4)), 8, compute_quality=False)
    cmap.codebook_fingerprint = "f" * 64  # the synthetic shards' tokenizer
    cmap.save_pretrained(tmp_path / "map")
    summary = train(**args_for(codes_dir, tmp_path / "run", model_config_file, cluster_map=str(tmp_path / "map"), max_steps=6))
    from masc_hf.models import LlamaGenForImageGeneration

    model = LlamaGenForImageGeneration.from_pretrained(summary["model_dir"])
    assert model.config.vocab_size == 8 and model.config.fine_vocab_size == 32
    assert model.config.cluster_map_fingerprint == MASCClusterMap.from_pretrained(tmp_path / "map").fingerprint
    cluster_map = MASCClusterMap.from_pretrained(tmp_path / "map")
    fine = cluster_map.decode(model.generate([0, 1], guidance_scale=1.0), generator=0)
    assert fine.shape == (2, 16) and int(fine.max()) < 32


def test_resume_continues_exactly(codes_dir, tmp_path, model_config_file):
    straight = train(**args_for(codes_dir, tmp_path / "a", model_config_file, ema_decay=0.9))
    # the same run again, then drop its last checkpoint and resume from step 8 to 12
    first = train(**args_for(codes_dir, tmp_path / "c", model_config_file, ema_decay=0.9, max_steps=12, checkpoint_every=4))
    assert first["loss"] == straight["loss"]  # deterministic on CPU
    import shutil

    shutil.rmtree(tmp_path / "c" / "checkpoint-12")
    resumed = train(**args_for(codes_dir, tmp_path / "c", model_config_file, ema_decay=0.9, resume="latest"))
    assert resumed["global_step"] == 12 and resumed["loss"] == straight["loss"]
    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    c = load_file(str(tmp_path / "c" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_sigkill_mid_run_then_resume_matches_uninterrupted(codes_dir, tmp_path, model_config_file):
    reference = train(**args_for(codes_dir, tmp_path / "ref", model_config_file, max_steps=24, checkpoint_every=4))
    cmd = [
        sys.executable, str(REPO / "recipes" / "train.py"), "--codes_dir", str(codes_dir), "--output_dir", str(tmp_path / "run"),
        "--preset", "", "--model_config", str(model_config_file), "--global_batch_size", "16", "--max_steps", "24",
        "--learning_rate", "3e-3", "--mixed_precision", "no", "--checkpoint_every", "4", "--log_every", "2",
        "--no_progress", "--log_with", "", "--seed", "0",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while latest_checkpoint(tmp_path / "run") is None or int(latest_checkpoint(tmp_path / "run").name.split("-")[1]) < 8:
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(latest_checkpoint(tmp_path / "run").name.split("-")[1])
    assert killed_at < 24
    resumed = subprocess.run(cmd + ["--resume", "latest"], env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = json.loads((tmp_path / "run" / "checkpoint-24" / "trainer_state.json").read_text())
    assert state["global_step"] == 24 and state["loss"] == reference["loss"]


def test_bad_arguments(codes_dir, tmp_path, model_config_file):
    with pytest.raises(TrainingError, match="not divisible"):
        train(**args_for(codes_dir, tmp_path / "x", model_config_file, global_batch_size=15, gradient_accumulation_steps=2))
    with pytest.raises(TrainingError, match="fewer than one global batch"):
        train(**args_for(codes_dir, tmp_path / "x", model_config_file, global_batch_size=128))
    with pytest.raises(TrainingError, match="not a complete checkpoint"):
        train(**args_for(codes_dir, tmp_path / "x", model_config_file, resume=str(tmp_path / "nowhere")))
    other = build_cluster_map(np.random.default_rng(0).standard_normal((32, 4)), 8, compute_quality=False)
    other.save_pretrained(tmp_path / "map")
    from masc_hf.errors import ClusterMapMismatchError

    with pytest.raises(ClusterMapMismatchError):
        train(**args_for(codes_dir, tmp_path / "x", model_config_file, cluster_map=str(tmp_path / "map")))


def test_eval_fn_runs_on_schedule_in_eval_mode_and_survives_resume(codes_dir, tmp_path, model_config_file):
    calls = []

    def eval_fn(step, model):
        assert not model.training and not torch.is_grad_enabled()
        # a metric computed from the weights, so a resumed run must reproduce it
        calls.append(step)
        return {"weight_sum": float(sum(p.double().sum() for p in model.parameters()))}

    straight = train(**args_for(codes_dir, tmp_path / "a", model_config_file, eval_every=5, eval_fn=eval_fn))
    assert calls == [5, 10, 12]  # every eval_every steps and the last one
    logged = json.loads((tmp_path / "a" / "eval_history.json").read_text())
    assert [r["step"] for r in logged] == [5, 10, 12] and logged == straight["eval_history"]

    # killed after step 8 (checkpoint-8 is the last complete one): the step-10 record must go
    train(**args_for(codes_dir, tmp_path / "b", model_config_file, eval_every=5, eval_fn=eval_fn))
    import shutil

    shutil.rmtree(tmp_path / "b" / "checkpoint-12")
    calls.clear()
    resumed = train(**args_for(codes_dir, tmp_path / "b", model_config_file, eval_every=5, resume="latest", eval_fn=eval_fn))
    assert calls == [10, 12]
    assert resumed["eval_history"] == logged  # same steps, same weights, same metric
    # a training loop without eval_fn writes no eval log
    train(**args_for(codes_dir, tmp_path / "c", model_config_file, max_steps=2))
    assert not (tmp_path / "c" / "eval_history.json").exists()


def test_gradient_checkpointing_trains_the_same_without_deprecation_warnings(codes_dir, tmp_path, model_config_file):
    """--gradient-checkpointing recomputes the layers in the backward pass: the same losses (dropout's
    RNG state is replayed), and transformers' current API (no FutureWarning from a deprecated name)."""
    import warnings

    plain = train(**args_for(codes_dir, tmp_path / "plain", model_config_file, max_steps=4))
    setup = args_for(codes_dir, tmp_path / "checkpointed", model_config_file, max_steps=4, gradient_checkpointing=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        checkpointed = train(**setup)
    model = setup["model"]
    assert getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing  # newer / older name
    assert len(checkpointed["history"]) == len(plain["history"]) == 2
    for a, b in zip(plain["history"], checkpointed["history"]):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
