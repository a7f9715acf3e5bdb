"""IAR's cluster-oriented loss: the loss against a loop over clusters (values and gradients), training
a flat model with it (both parts logged, exact resume, resume guard, a plain flat model and pipeline
at the end), the recipe's flags, and the bad inputs refused before any training step."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masc_hf import MASCClusterMap, build_cluster_map
from masc_hf.errors import ClusterMapMismatchError, MASCError
from masc_hf.training import ARTrainingArguments, ClusterOrientedLoss, train
from masc_hf.training.trainer import TrainingError

REPO = Path(__file__).resolve().parents[2]
# 13 tokens in 4 clusters of sizes 2, 3, 6 and 2, members scattered over the ids (no contiguous slices)
UNEQUAL = np.array([0, 1, 0, 2, 1, 2, 2, 3, 2, 1, 2, 3, 2])


def loop_loss(logits, labels, mapping, weight):
    """The definition, one row at a time: a cluster's logit is the logsumexp of its members' logits."""
    rows, targets = logits.reshape(-1, logits.shape[-1]), labels.reshape(-1)
    token_terms, cluster_terms = [], []
    for row, target in zip(rows, targets.tolist()):
        if target == -100:
            continue
        clusters = torch.stack([torch.logsumexp(row[torch.as_tensor(mapping == c)], 0) for c in range(int(mapping.max()) + 1)])
        token_terms.append(-torch.log_softmax(row, 0)[target])
        cluster_terms.append(-torch.log_softmax(clusters, 0)[int(mapping[target])])
    token, cluster = torch.stack(token_terms).mean(), torch.stack(cluster_terms).mean()
    return token + weight * cluster, token, cluster


def random_case(seed=0, shape=(3, 5), dtype=torch.float64):
    generator = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(*shape, UNEQUAL.size, generator=generator, dtype=dtype)).requires_grad_()
    labels = torch.randint(0, UNEQUAL.size, shape, generator=generator)
    labels[0, 1] = labels[-1, -1] = -100
    return logits, labels


# ------------------------------------------------------------------------------------ the loss
def test_loss_and_gradients_match_a_loop_over_clusters():
    logits, labels = random_case()
    loss = ClusterOrientedLoss(UNEQUAL, weight=0.7)(logits, labels)
    expected = loop_loss(logits, labels, UNEQUAL, 0.7)
    for ours, theirs in zip(loss, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(loss.loss, logits)
    (expected_grad,) = torch.autograd.grad(expected[0], logits)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    assert not grad[0, 1].any() and not grad[-1, -1].any()  # ignored positions get no gradient
    # float32 and the balanced clusters IAR uses (k equal clusters, members spread over the ids)
    balanced = np.arange(64) % 8
    logits32 = torch.randn(2, 6, 64)
    labels32 = torch.randint(0, 64, (2, 6))
    torch.testing.assert_close(ClusterOrientedLoss(balanced, 2.0)(logits32, labels32).loss, loop_loss(logits32, labels32, balanced, 2.0)[0])


def test_gradcheck():
    logits, labels = random_case(seed=1, shape=(2, 3))
    loss = ClusterOrientedLoss(UNEQUAL, weight=1.3)
    assert torch.autograd.gradcheck(lambda x: loss(x, labels).loss, (logits,))


def test_weight_zero_is_the_plain_cross_entropy():
    logits, labels = random_case(seed=2, dtype=torch.float32)
    ours = ClusterOrientedLoss(UNEQUAL, weight=0.0)(logits, labels)
    plain = F.cross_entropy(logits.reshape(-1, UNEQUAL.size), labels.reshape(-1), ignore_index=-100)
    assert torch.equal(ours.loss, plain) and torch.equal(ours.token_loss, plain) and ours.cluster_loss > 0
    assert torch.equal(torch.autograd.grad(ours.loss, logits)[0], torch.autograd.grad(plain, logits)[0])


def test_singleton_clusters_give_the_token_loss_and_one_cluster_gives_zero():
    logits, labels = random_case(seed=3)
    singletons = ClusterOrientedLoss(np.arange(UNEQUAL.size))(logits, labels)
    torch.testing.assert_close(singletons.cluster_loss, singletons.token_loss)
    one = ClusterOrientedLoss(np.zeros(UNEQUAL.size, dtype=np.int64))(logits, labels)
    assert float(one.cluster_loss.detach()) == pytest.approx(0, abs=1e-12)


def test_compiles_in_one_graph():
    logits, labels = random_case(seed=4, dtype=torch.float32)
    loss = ClusterOrientedLoss(UNEQUAL, weight=0.5)
    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)  # fullgraph: no graph break, no host sync
    torch.testing.assert_close(compiled(logits, labels).loss, loss(logits, labels).loss)


def test_loss_refuses_bad_arguments():
    logits, labels = random_case()
    for weight in (-1.0, float("nan"), float("inf"), "1"):
        with pytest.raises(MASCError, match=f"weight={weight!r} is not a loss weight"):
            ClusterOrientedLoss(UNEQUAL, weight=weight)
    with pytest.raises(MASCError, match="mapping must be"):
        ClusterOrientedLoss(UNEQUAL.reshape(1, -1))
    with pytest.raises(MASCError, match=r"do not fit a map over N=12 tokens"):
        ClusterOrientedLoss(UNEQUAL[:12])(logits, labels)


# ------------------------------------------------------------------------------------ training
def flat_map(k=4, seed=0, num_tokens=32, fingerprint="f" * 64, method="masc"):
    """A map over the synthetic shards' 32 tokens (unequal clusters with the default "masc")."""
    cmap = build_cluster_map(np.random.default_rng(seed).standard_normal((num_tokens, 4)), k, method=method, compute_quality=False)
    cmap.codebook_fingerprint = fingerprint
    return cmap


def test_training_logs_both_parts_and_stays_flat(tiny_run, tmp_path):
    cmap = flat_map()
    assert len(set(cmap.cluster_sizes.tolist())) > 1  # unequal clusters
    plain = train(**tiny_run(tmp_path / "plain", max_steps=2))
    summary = train(**tiny_run(tmp_path / "run", cluster_loss_weight=0.5), cluster_loss_map=cmap)
    history = summary["history"]
    assert [r["step"] for r in history] == [1, 2, 3, 4]
    for record in history:
        assert record["loss"] == pytest.approx(record["token_loss"] + 0.5 * record["cluster_loss"], rel=1e-6)
        assert 0 < record["cluster_loss"] < record["token_loss"]  # a cluster is at least as likely as its member
    # same initial weights and first batch: the first step's token part is the plain run's loss
    assert history[0]["token_loss"] == plain["history"][0]["loss"]
    assert history[-1]["loss"] < history[0]["loss"]
    state = json.loads((tmp_path / "run" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["run"]["cluster_loss_map"] == cmap.fingerprint and state["run"]["cluster_loss_weight"] == 0.5
    # the saved model is a plain flat LlamaGen: nothing about the loss's map in its config
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    plain_config = json.loads((tmp_path / "plain" / "model" / "config.json").read_text())
    assert config == plain_config and config["vocab_size"] == 32 and config["cluster_map_fingerprint"] is None
    # the default weight is IAR's 1.0
    default = train(**tiny_run(tmp_path / "default", max_steps=1), cluster_loss_map=cmap)
    record = default["history"][0]
    assert record["loss"] == pytest.approx(record["token_loss"] + record["cluster_loss"], rel=1e-6)


def test_resume_is_exact_and_a_changed_loss_needs_allowing(tiny_run, tmp_path):
    cmap = flat_map()
    straight = train(**tiny_run(tmp_path / "a", cluster_loss_weight=0.5), cluster_loss_map=cmap)
    train(**tiny_run(tmp_path / "b", cluster_loss_weight=0.5), cluster_loss_map=cmap)
    shutil.rmtree(tmp_path / "b" / "checkpoint-4")  # killed after step 3: resume from step 2
    resumed = train(**tiny_run(tmp_path / "b", cluster_loss_weight=0.5, resume="latest"), cluster_loss_map=cmap)
    assert resumed["loss"] == straight["loss"]
    strip = [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in straight["history"]]
    assert [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in resumed["history"]] == strip

    out = tmp_path / "a"
    with pytest.raises(TrainingError, match=r"cluster_loss_weight 0.5 -> 1.0.*--allow_changed_settings cluster_loss_weight "):
        train(**tiny_run(out, cluster_loss_weight=1.0, resume="latest", max_steps=6), cluster_loss_map=cmap)
    with pytest.raises(TrainingError, match=r"cluster_loss_map '[0-9a-f]{64}' -> None, cluster_loss_weight 0.5 -> None"):
        train(**tiny_run(out, resume="latest", max_steps=6))  # the loss map dropped
    other = flat_map(seed=1)
    with pytest.raises(TrainingError, match=f"cluster_loss_map '{cmap.fingerprint}' -> '{other.fingerprint}'"):
        train(**tiny_run(out, cluster_loss_weight=0.5, resume="latest", max_steps=6), cluster_loss_map=other)
    assert not (out / "checkpoint-6").exists()
    changed = train(**tiny_run(out, cluster_loss_weight=1.0, resume="latest", max_steps=6, allow_changed_settings="cluster_loss_weight"),
                    cluster_loss_map=cmap)
    for record in changed["history"]:
        weight = 0.5 if record["step"] <= 4 else 1.0
        assert record["loss"] == pytest.approx(record["token_loss"] + weight * record["cluster_loss"], rel=1e-6)
    assert [r["step"] for r in changed["history"]] == [1, 2, 3, 4, 5, 6]


def test_pipeline_of_a_cluster_loss_run_is_flat(tiny_run, codes_dir, tmp_path, tiny_vqmodel):
    from masc_hf import MASCPipeline
    from masc_hf.pipelines.pairing import tokenizer_fingerprint

    vq = tiny_vqmodel()
    fingerprint = tokenizer_fingerprint(vq)
    shutil.copytree(codes_dir, tmp_path / "vq_codes")
    manifest = json.loads((tmp_path / "vq_codes" / "manifest.json").read_text())
    (tmp_path / "vq_codes" / "manifest.json").write_text(json.dumps({**manifest, "tokenizer_fingerprint": fingerprint}))
    summary = train(**tiny_run(tmp_path / "run", codes=tmp_path / "vq_codes", max_steps=2), vqvae=vq,
                    cluster_loss_map=flat_map(fingerprint=fingerprint, method="balanced-kmeans"))
    pipe = MASCPipeline.from_pretrained(summary["pipeline_dir"])
    assert pipe.cluster_map is None and not pipe.transformer.config.is_masc and pipe.transformer.config.vocab_size == 32
    assert not Path(summary["pipeline_dir"], "cluster_map").exists()
    # where neither the data nor the model names its tokenizer, the VQ's is checked
    run = tiny_run(tmp_path / "other", codes=tmp_path / "vq_codes")
    run["model"].config.tokenizer_fingerprint = None
    unlabelled = torch.utils.data.Subset(run["train_dataset"], range(len(run["train_dataset"])))  # no manifest
    with pytest.raises(ClusterMapMismatchError, match=r"cluster_loss_map: .*built from codebook eeeeeeeeeeee\.\.\. but the vqvae uses"):
        train(model=run["model"], train_dataset=unlabelled, args=run["args"], vqvae=vq, cluster_loss_map=flat_map(fingerprint="e" * 64))
    assert not (tmp_path / "other").exists()


def test_recipe_flags(codes_dir, model_config_file, tmp_path):
    flat_map(method="balanced-kmeans").save_pretrained(tmp_path / "map")
    cmd = [
        sys.executable, str(REPO / "recipes" / "train.py"), "--codes_dir", str(codes_dir), "--output_dir", str(tmp_path / "run"),
        "--preset", "", "--model_config", str(model_config_file), "--global_batch_size", "16", "--max_steps", "2",
        "--learning_rate", "3e-3", "--mixed_precision", "no", "--log_every", "1", "--no_progress", "--log_with", "",
        "--cluster_loss_map", str(tmp_path / "map"), "--cluster_loss_weight", "0.25",
    ]
    done = subprocess.run(cmd, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 2]
    assert all(r["loss"] == pytest.approx(r["token_loss"] + 0.25 * r["cluster_loss"], rel=1e-6) for r in history)
    assert json.loads((tmp_path / "run" / "training_args.json").read_text())["cluster_loss_weight"] == 0.25
    state = json.loads((tmp_path / "run" / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["run"]["cluster_loss_map"] == MASCClusterMap.from_pretrained(tmp_path / "map").fingerprint


# ------------------------------------------------------------------------------------ bad input
def test_bad_cluster_loss_inputs_are_refused_before_training(tiny_run, codes_dir, tmp_path):
    out = tmp_path / "run"
    # a map over another number of tokens than the flat model's vocabulary
    wide = flat_map(num_tokens=64)
    with pytest.raises(ClusterMapMismatchError, match="cluster_loss_map: the cluster map covers N=64 tokens but the flat model's vocabulary has 32"):
        train(**tiny_run(out), cluster_loss_map=wide)
    # a map for a MASC model, whose ids are already clusters
    with pytest.raises(ClusterMapMismatchError, match="given for a MASC model, whose ids are already the k=8 clusters.*drop --cluster_loss_map"):
        train(**tiny_run(out, cluster_map=flat_map(k=8)), cluster_loss_map=flat_map())
    # a map built from another tokenizer's codebook than the codes'
    with pytest.raises(ClusterMapMismatchError, match=r"built from codebook eeeeeeeeeeee\.\.\. but the codes' VQ tokenizer uses codebook ffffffffffff"):
        train(**tiny_run(out), cluster_loss_map=flat_map(fingerprint="e" * 64))
    # ... or than the model's, when the data does not say
    run = tiny_run(out)
    unlabelled = torch.utils.data.Subset(run["train_dataset"], range(len(run["train_dataset"])))  # no manifest
    with pytest.raises(ClusterMapMismatchError, match=r"eeeeeeeeeeee\.\.\. but the model's VQ tokenizer uses codebook ffffffffffff"):
        train(model=run["model"], train_dataset=unlabelled, args=run["args"], cluster_loss_map=flat_map(fingerprint="e" * 64))
    # a weight without a map
    with pytest.raises(TrainingError, match=r"cluster_loss_weight=0.5 was given without a cluster-loss map; pass the map.*--cluster_loss_map DIR"):
        train(**tiny_run(out, cluster_loss_weight=0.5))
    # not a map
    with pytest.raises(ClusterMapMismatchError, match="cluster_loss_map: expected a MASCClusterMap, got str"):
        train(**tiny_run(out), cluster_loss_map=str(tmp_path / "map"))
    assert not out.exists()  # nothing was written
    # negative, NaN or infinite weights: refused when the arguments are built
    for weight in (-0.5, float("nan"), float("inf")):
        with pytest.raises(TrainingError, match=f"cluster_loss_weight={weight!r} must be a finite number >= 0"):
            ARTrainingArguments(output_dir=str(out), cluster_loss_weight=weight)


def test_recipe_reports_cluster_loss_mistakes_in_one_line(codes_dir, model_config_file, tmp_path, run_recipe):
    flat_map().save_pretrained(tmp_path / "map")
    flat_map(num_tokens=64).save_pretrained(tmp_path / "wide")
    flat_map(k=8).save_pretrained(tmp_path / "masc")
    flat_map(fingerprint="e" * 64).save_pretrained(tmp_path / "other")
    common = ["--codes_dir", codes_dir, "--output_dir", tmp_path / "run", "--preset", "", "--model_config", model_config_file,
              "--max_steps", "2", "--global_batch_size", "16", "--mixed_precision", "no", "--no_progress", "--log_with", ""]
    cases = [
        (["--cluster_loss_map", tmp_path / "wide"], "cluster_loss_map: the cluster map covers N=64 tokens but the codes' vocabulary has 32"),
        (["--cluster_loss_map", tmp_path / "map", "--cluster_map", tmp_path / "masc"], "given for a MASC model"),
        (["--cluster_loss_map", tmp_path / "other"], "built from codebook eeeeeeeeeeee... but the codes' VQ tokenizer"),
        (["--cluster_loss_weight", "0.5"], "cluster_loss_weight=0.5 was given without a cluster-loss map"),
        (["--cluster_loss_map", tmp_path / "map", "--cluster_loss_weight", "-1"], "cluster_loss_weight=-1.0 must be a finite number >= 0"),
        (["--cluster_loss_map", tmp_path / "map", "--cluster_loss_weight", "nan"], "cluster_loss_weight=nan must be a finite number >= 0"),
        (["--cluster_loss_map", tmp_path / "nowhere"], "nowhere"),
    ]
    for extra, message in cases:
        code, err = run_recipe([*common, *extra])
        assert code == 2 and err.count("\n") == 1 and err.startswith("train.py: error: ") and message in err, (extra, err)
    assert not (tmp_path / "run").exists()
