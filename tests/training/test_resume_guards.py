"""Careless and hostile inputs to training: bad arguments, resuming with other settings, damaged
checkpoints, unknown model-config keys and components of another tokenizer are refused before any
training step, with a message naming the value and the fix; a truncated newest checkpoint is skipped
with a warning; the history covers the whole run across resumes."""

import json
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from masc_hf import build_cluster_map
from masc_hf.data import CodeShardDataset
from masc_hf.errors import MASCError
from masc_hf.training import ARTrainingArguments, latest_checkpoint, model_for_codes, train
from masc_hf.training.trainer import TrainingError


def without_speed(history):
    return [{k: v for k, v in record.items() if k != "tokens_per_s"} for record in history]


# ------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "kw, name",
    [
        ({"keep_checkpoints": 0}, "keep_checkpoints"),
        ({"keep_checkpoints": -1}, "keep_checkpoints"),
        ({"checkpoint_every": 0}, "checkpoint_every"),
        ({"checkpoint_every": -4}, "checkpoint_every"),
        ({"log_every": 0}, "log_every"),
        ({"global_batch_size": 0}, "global_batch_size"),
        ({"global_batch_size": -16}, "global_batch_size"),
        ({"gradient_accumulation_steps": 0}, "gradient_accumulation_steps"),
        ({"max_steps": 0}, "max_steps"),
        ({"epochs": 0}, "epochs"),
        ({"eval_every": 0}, "eval_every"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"learning_rate": -1e-3}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"learning_rate": 1e-4, "min_learning_rate": 1e-3}, "min_learning_rate"),
        ({"warmup_steps": -1}, "warmup_steps"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"ema_decay": 0.0}, "ema_decay"),
        ({"seed": -1}, "seed"),
        ({"num_workers": -1}, "num_workers"),
        ({"mixed_precision": "fp8"}, "mixed_precision"),
        ({"adam_beta2": 1.0}, "adam_beta2"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"cluster_loss_weight": -1.0}, "cluster_loss_weight"),
        ({"cluster_loss_weight": float("nan")}, "cluster_loss_weight"),
        ({"cluster_loss_weight": float("inf")}, "cluster_loss_weight"),
        ({"allow_changed_settings": "learning_rat"}, "did you mean 'learning_rate'"),
        ({"allow_changed_settings": "global_batch_size"}, "new --output_dir"),
        ({"allow_changed_settings": "hidden_size"}, "new --output_dir"),
    ],
)
def test_bad_arguments_are_refused_when_built(tmp_path, kw, name):
    with pytest.raises(TrainingError, match=name):
        ARTrainingArguments(output_dir=str(tmp_path / "run"), **kw)


def test_minimum_learning_rate_above_the_papers_peak_is_refused_before_training(tiny_run, tmp_path):
    with pytest.raises(TrainingError, match="min_learning_rate=0.001 is above the peak learning rate 0.0001"):
        train(**tiny_run(tmp_path / "run", learning_rate=None, min_learning_rate=1e-3))
    assert not (tmp_path / "run").exists()


def test_output_dir_that_is_a_file_is_refused_before_training(tiny_run, tmp_path):
    (tmp_path / "taken").write_text("not a directory")
    for out in (tmp_path / "taken", tmp_path / "taken" / "run"):
        with pytest.raises(TrainingError, match="is a file; pass a directory path"):
            train(**tiny_run(out))


def test_recipe_reports_bad_input_in_one_line(codes_dir, model_config_file, tmp_path, run_recipe):
    common = ["--codes_dir", codes_dir, "--output_dir", tmp_path / "run", "--preset", "", "--max_steps", "2", "--global_batch_size", "16",
              "--mixed_precision", "no", "--no_progress", "--log_with", ""]
    code, err = run_recipe([*common, "--model_config", model_config_file, "--keep_checkpoints", "0"])
    assert code == 2 and err.count("\n") == 1 and err.startswith("train.py: error: keep_checkpoints=0")
    misspelt = tmp_path / "misspelt.json"
    misspelt.write_text(json.dumps({"hiden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2}))
    code, err = run_recipe([*common, "--model_config", misspelt])
    assert code == 2 and err.count("\n") == 1 and "'hiden_size' (did you mean 'hidden_size'?)" in err
    listed = tmp_path / "list.json"
    listed.write_text("[32, 2]")
    code, err = run_recipe([*common, "--model_config", listed])
    assert code == 2 and err.count("\n") == 1 and "not a list" in err
    assert not (tmp_path / "run").exists()  # refused before anything was written


# ------------------------------------------------------------------------------------ model config
def test_model_config_keys_and_types_are_checked(codes_dir, tmp_path):
    dataset = CodeShardDataset(codes_dir)
    tiny = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "multiple_of": 32}
    with pytest.raises(TrainingError, match=r"'num_hiden_layers' \(did you mean 'num_hidden_layers'\?\)"):
        model_for_codes(dataset, model_config={**tiny, "num_hiden_layers": 2})
    with pytest.raises(TrainingError, match=r"'n_layers' \(did you mean 'n_layer'\?\), 'colour'"):
        model_for_codes(dataset, model_config={**tiny, "n_layers": 2, "colour": "red"})
    for text, kind in (('"GPT-B"', "string"), ("[1, 2]", "list"), ("3", "number"), ("null", "null")):
        path = tmp_path / f"{kind}.json"
        path.write_text(text)
        with pytest.raises(TrainingError, match=f"must be a JSON object.*not a {kind}"):
            model_for_codes(dataset, model_config=path)
    (tmp_path / "broken.json").write_text('{"hidden_size": 32,')
    with pytest.raises(TrainingError, match="not valid JSON"):
        model_for_codes(dataset, model_config=tmp_path / "broken.json")
    with pytest.raises(TrainingError, match="does not exist"):
        model_for_codes(dataset, model_config=tmp_path / "nowhere.json")
    with pytest.raises(TrainingError, match="wrong type"):
        model_for_codes(dataset, model_config={**tiny, "hidden_size": "wide"})
    with pytest.raises(TrainingError, match="class_dropout_prob=0.0 but class_dropout_prob=0.1"):
        model_for_codes(dataset, model_config={**tiny, "class_dropout_prob": 0.0})
    # a saved model's config.json is a model config too (its metadata keys are accepted)
    model = model_for_codes(dataset, model_config=tiny)
    model.config.to_json_file(tmp_path / "config.json")
    again = model_for_codes(dataset, model_config=tmp_path / "config.json")
    assert again.config.hidden_size == 32 and again.config.num_hidden_layers == 1


# ------------------------------------------------------------------------------------ resuming
def test_resume_with_changed_settings_is_refused_before_training(tiny_run, tmp_path):
    out = tmp_path / "run"
    train(**tiny_run(out))
    recorded = (out / "training_args.json").read_text()
    with pytest.raises(TrainingError) as err:
        train(**tiny_run(out, resume="latest", max_steps=6, learning_rate=1e-3))
    message = str(err.value)
    assert "learning_rate 0.003 -> 0.001" in message and "--allow_changed_settings learning_rate " in message
    assert "new --output_dir" in message
    overridable = [
        ({"seed": 1}, "seed 0 -> 1"),
        ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps 1 -> 2"),
        ({"ema_decay": 0.9}, "ema_decay None -> 0.9"),
        ({"warmup_steps": 2}, "warmup_steps 0 -> 2"),
        ({"min_learning_rate": 1e-5}, "min_learning_rate None -> 1e-05"),
        ({"weight_decay": 0.1}, "weight_decay 0.05 -> 0.1"),
        ({"mixed_precision": "bf16"}, "mixed_precision 'no' -> 'bf16'"),
        ({"class_dropout_prob": 0.2}, "class_dropout_prob 0.1 -> 0.2"),
        ({"learning_rate": 1e-3, "seed": 2}, "--allow_changed_settings learning_rate,seed"),
    ]
    for kw, named in overridable:
        with pytest.raises(TrainingError, match="--allow_changed_settings") as err:
            train(**tiny_run(out, resume="latest", max_steps=6, **kw))
        assert named in str(err.value), (kw, str(err.value))
    wider = tmp_path / "wider.json"
    wider.write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "multiple_of": 32}))
    fixed = [
        ({"global_batch_size": 8}, "global_batch_size 16 -> 8"),
        ({"model_config": wider}, "hidden_size 32 -> 64"),
        ({"class_dropout_prob": 0.0}, "class_dropout_prob 0.1 -> 0.0"),  # the null-class row goes
    ]
    for kw, named in fixed:
        with pytest.raises(TrainingError, match="cannot resume") as err:
            train(**tiny_run(out, resume="latest", max_steps=6, **kw))
        assert named in str(err.value) and "new --output_dir" in str(err.value) and "allow_changed_settings" not in str(err.value)
    # named as allowed, a fixed setting is still refused
    with pytest.raises(TrainingError, match="global_batch_size 16 -> 8"):
        train(**tiny_run(out, resume="latest", max_steps=6, global_batch_size=8, allow_changed_settings="seed"))
    with pytest.raises(TrainingError, match=r"max_steps=2 is below the step of the checkpoint being resumed \(checkpoint-4, step 4\)"):
        train(**tiny_run(out, resume="latest", max_steps=2))
    assert latest_checkpoint(out).name == "checkpoint-4" and not (out / "checkpoint-6").exists()
    assert (out / "training_args.json").read_text() == recorded  # nothing was rewritten


def test_resume_with_another_cluster_map_is_refused(tiny_run, tmp_path):
    maps = []
    for seed in (0, 1):
        cmap = build_cluster_map(np.random.default_rng(seed).standard_normal((32, 4)), 8, compute_quality=False)
        cmap.codebook_fingerprint = "f" * 64  # the synthetic shards' tokenizer
        maps.append(cmap)
    train(**tiny_run(tmp_path / "run", cluster_map=maps[0], max_steps=2))
    with pytest.raises(TrainingError, match="cannot resume.*cluster_map_fingerprint"):
        train(**tiny_run(tmp_path / "run", cluster_map=maps[1], max_steps=4, resume="latest"))


def test_allowed_changes_take_effect_and_history_covers_the_run(tiny_run, tmp_path, caplog):
    from masc_hf.training.schedules import warmup_cosine_schedule

    out = tmp_path / "run"
    first = train(**tiny_run(out))
    with caplog.at_level(logging.WARNING, logger="masc_hf.training.trainer"):
        resumed = train(**tiny_run(out, resume="latest", max_steps=8, learning_rate=1e-3, weight_decay=0.1,
                                   allow_changed_settings="learning_rate,weight_decay"))
    assert "changed settings (allowed): learning_rate 0.003 -> 0.001, weight_decay 0.05 -> 0.1" in caplog.text
    assert "ends at step 8 instead of 4" in caplog.text
    assert resumed["global_step"] == 8
    # the history is the whole run: steps 1-4 as the first run logged them, 5-8 after the resume
    history = json.loads((out / "history.json").read_text())
    assert [r["step"] for r in history] == list(range(1, 9)) and history == resumed["history"]
    assert without_speed(history[:4]) == without_speed(first["history"])
    # from step 4 on the learning rate is the new peak's cosine to the new end (not the checkpoint's 3e-3 one)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    schedule = warmup_cosine_schedule(optimizer, warmup_steps=0, total_steps=8, min_lr_ratio=0.1)
    expected = []
    for _ in range(8):
        optimizer.step()
        schedule.step()
        expected.append(schedule.get_last_lr()[0])
    assert [r["lr"] for r in history[4:]] == pytest.approx(expected[4:], rel=1e-6)
    optimizer_state = torch.load(out / "checkpoint-8" / "optimizer.bin", weights_only=True)
    assert optimizer_state["param_groups"][0]["weight_decay"] == 0.1 and optimizer_state["param_groups"][1]["weight_decay"] == 0.0
    assert json.loads((out / "training_args.json").read_text())["learning_rate"] == 1e-3  # what it says is what ran


def test_free_settings_change_without_a_flag_and_history_survives_a_lost_checkpoint(tiny_run, tmp_path):
    straight = train(**tiny_run(tmp_path / "a", max_steps=8))
    train(**tiny_run(tmp_path / "b", max_steps=8))
    shutil.rmtree(tmp_path / "b" / "checkpoint-8")  # killed after step 7: resume from step 6
    resumed = train(**tiny_run(tmp_path / "b", max_steps=8, resume="latest", log_every=2, checkpoint_every=1, keep_checkpoints=3,
                               num_workers=0, eval_every=3))
    assert resumed["loss"] == straight["loss"]
    history = json.loads((tmp_path / "b" / "history.json").read_text())
    # steps 1-6 from the checkpoint, then every log_every=2 steps
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6, 8]
    assert without_speed(history) == without_speed([r for r in straight["history"] if r["step"] in (1, 2, 3, 4, 5, 6, 8)])
    assert sorted(p.name for p in (tmp_path / "b").glob("checkpoint-*")) == ["checkpoint-6", "checkpoint-7", "checkpoint-8"]


def test_changed_accumulation_keeps_the_data_position(tiny_run, tmp_path):
    train(**tiny_run(tmp_path / "run"))  # 96 examples / 16 = 6 steps an epoch; stopped at step 4
    resumed = train(**tiny_run(tmp_path / "run", max_steps=8, resume="latest", gradient_accumulation_steps=2,
                               allow_changed_settings="gradient_accumulation_steps"))
    assert resumed["global_step"] == 8 and math.isfinite(resumed["loss"])
    state = json.loads((tmp_path / "run" / "checkpoint-8" / "trainer_state.json").read_text())
    # step 8 is 2 steps into the second epoch: 4 micro-batches of 8
    assert (state["epoch"], state["batches_consumed"]) == (1, 4)


# ------------------------------------------------------------------------------------ damaged checkpoints
@pytest.mark.parametrize("damage", ["truncate model.safetensors", "delete optimizer.bin", "truncate random_states_0.pkl"])
def test_truncated_newest_checkpoint_falls_back_to_the_previous_one(tiny_run, tmp_path, caplog, damage):
    out = tmp_path / "run"
    first = train(**tiny_run(out))
    action, name = damage.split()
    path = out / "checkpoint-4" / name
    if action == "delete":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    assert latest_checkpoint(out).name == "checkpoint-2"
    with pytest.raises(TrainingError, match=f"not a complete checkpoint \\({name}"):
        train(**tiny_run(out, resume=str(out / "checkpoint-4")))  # named by path: no fallback
    with caplog.at_level(logging.WARNING, logger="masc_hf.training.trainer"):
        resumed = train(**tiny_run(out, resume="latest"))
    assert f"checkpoint-4 ({name}" in caplog.text and "resuming from checkpoint-2 instead" in caplog.text
    assert resumed["global_step"] == 4 and resumed["loss"] == first["loss"]  # still an exact resume
    assert latest_checkpoint(out).name == "checkpoint-4"  # rewritten whole


def test_no_complete_checkpoint_is_an_error(tiny_run, tmp_path):
    out = tmp_path / "run"
    train(**tiny_run(out))
    for step in (2, 4):
        (out / f"checkpoint-{step}" / "model.safetensors").unlink()
    with pytest.raises(TrainingError, match="no complete checkpoint.*checkpoint-4: model.safetensors is missing"):
        train(**tiny_run(out, resume="latest"))


def test_corrupt_random_states_stop_the_resume(tiny_run, tmp_path):
    out = tmp_path / "run"
    train(**tiny_run(out))
    path = out / "checkpoint-4" / "random_states_0.pkl"
    path.write_bytes(bytes(255 - b for b in path.read_bytes()))  # same size, other bytes
    with pytest.raises(TrainingError, match=f"{path} cannot be read.*--resume {out / 'checkpoint-2'}"):
        train(**tiny_run(out, resume="latest", max_steps=6))
    shutil.rmtree(out / "checkpoint-2")
    with pytest.raises(TrainingError, match="random_states_0.pkl cannot be read.*new --output_dir"):
        train(**tiny_run(out, resume="latest", max_steps=6))
    # a damaged weights file of the right size is an error too, not a traceback
    train(**tiny_run(tmp_path / "other"))
    weights = tmp_path / "other" / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(b"\xff" * weights.stat().st_size)
    with pytest.raises(TrainingError, match="checkpoint-4 cannot be loaded.*--resume .*checkpoint-2"):
        train(**tiny_run(tmp_path / "other", resume="latest", max_steps=6))


# ------------------------------------------------------------------------------------ pairings
def test_flat_model_records_its_tokenizer_and_every_pairing_is_checked_first(tiny_run, codes_dir, tmp_path, tiny_vqmodel):
    from masc_hf.models import LlamaGenConfig, LlamaGenForImageGeneration
    from masc_hf.pipelines.pairing import check_model_fits_vq, tokenizer_fingerprint

    run = tiny_run(tmp_path / "run")
    assert run["model"].config.tokenizer_fingerprint == "f" * 64
    run["model"].save_pretrained(tmp_path / "saved")
    assert LlamaGenForImageGeneration.from_pretrained(tmp_path / "saved").config.tokenizer_fingerprint == "f" * 64
    old = json.loads((tmp_path / "saved" / "config.json").read_text())
    del old["tokenizer_fingerprint"]
    assert LlamaGenConfig.from_dict(old).tokenizer_fingerprint is None  # configs saved before the field still load

    vq = tiny_vqmodel()
    fingerprint = tokenizer_fingerprint(vq)
    # the model (and codes) of tokenizer "f" * 64 with another VQ: refused before any step
    with pytest.raises(MASCError, match="pass the VQ tokenizer the codes were extracted with"):
        train(**run, vqvae=vq)
    with pytest.raises(MASCError, match="trained on the ids of VQ tokenizer ffffffffffff"):
        check_model_fits_vq(run["model"], vq)
    # codes of the VQ, model of "f" * 64: the model does not fit the codes
    shutil.copytree(codes_dir, tmp_path / "vq_codes")
    manifest = json.loads((tmp_path / "vq_codes" / "manifest.json").read_text())
    (tmp_path / "vq_codes" / "manifest.json").write_text(json.dumps({**manifest, "tokenizer_fingerprint": fingerprint}))
    with pytest.raises(TrainingError, match="the model was built for the ids of VQ tokenizer ffffffffffff"):
        train(model=run["model"], train_dataset=CodeShardDataset(tmp_path / "vq_codes"), args=run["args"], vqvae=vq)
    # a model without a recorded fingerprint (built before the field existed) still meets the codes' check
    run["model"].config.tokenizer_fingerprint = None
    with pytest.raises(MASCError, match="pass the VQ tokenizer the codes were extracted with"):
        train(**run, vqvae=vq)
    assert not (tmp_path / "run").exists()  # nothing trained
    # everything of one tokenizer: trains and writes the pipeline
    fitting = tiny_run(tmp_path / "fits", codes=tmp_path / "vq_codes", max_steps=2)
    assert fitting["model"].config.tokenizer_fingerprint == fingerprint
    check_model_fits_vq(fitting["model"], vq)
    summary = train(**fitting, vqvae=vq)
    assert summary["pipeline_dir"] is not None and Path(summary["pipeline_dir"], "model_index.json").is_file()


def test_checkpoints_get_the_usual_permissions_and_a_killed_runs_staging_is_cleaned(tiny_run, tmp_path):
    """A checkpoint is staged under _io's name pattern by every process, then published like every
    other output: 0755 directories and 0644 files under umask 022, and a staging directory a killed
    run left for the same checkpoint is removed."""
    import os
    import stat

    from masc_hf.training import train

    out = tmp_path / "run"
    out.mkdir()
    leftover = out / ".checkpoint-2.abcd1234.tmp"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half")
    old_mask = os.umask(0o022)
    try:
        train(**tiny_run(out, max_steps=2))
    finally:
        os.umask(old_mask)
    checkpoint = out / "checkpoint-2"
    assert stat.S_IMODE(checkpoint.stat().st_mode) == 0o755
    assert {stat.S_IMODE(p.stat().st_mode) for p in checkpoint.rglob("*") if p.is_file()} == {0o644}
    assert not leftover.exists()
