"""--compile: the same training (to float rounding, without dropout: a compiled graph draws its own
dropout masks), the same files, resumable."""

import json

import pytest
import torch
from safetensors.torch import load_file

from masc_hf.data import CodeShardDataset
from masc_hf.training import ARTrainingArguments, model_for_codes, train


def run(codes_dir, out, model_config_file, class_dropout_prob=0.0, **kw):
    base = dict(output_dir=str(out), global_batch_size=16, max_steps=4, learning_rate=3e-3, mixed_precision="no",
                checkpoint_every=2, log_every=1, progress=False, log_with=None, seed=0)
    args = ARTrainingArguments(**{**base, **kw})
    dataset = CodeShardDataset(codes_dir, seed=args.seed)
    return train(model=model_for_codes(dataset, model_config=model_config_file, class_dropout_prob=class_dropout_prob, seed=args.seed), train_dataset=dataset, args=args)


@pytest.mark.slow  # compiling the tiny model's forward and backward takes tens of seconds on 2 cores
def test_compiled_training_matches_eager_and_resumes(codes_dir, tmp_path, model_config_file):
    no_dropout = tmp_path / "model.json"
    config = json.loads(model_config_file.read_text())
    no_dropout.write_text(json.dumps({**config, "token_dropout": 0.0, "resid_dropout": 0.0, "ffn_dropout": 0.0}))
    model_config_file = no_dropout
    eager = run(codes_dir, tmp_path / "eager", model_config_file)
    compiled = run(codes_dir, tmp_path / "compiled", model_config_file, compile=True)
    for a, b in zip(eager.history, compiled.history):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4, abs=1e-5)
    a = load_file(str(tmp_path / "eager" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "compiled" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()  # no "_orig_mod." prefix: the model compiled in place
    assert all(torch.allclose(a[k], b[k], atol=1e-4) for k in a)
    resumed = run(codes_dir, tmp_path / "compiled", model_config_file, max_steps=6, resume="latest", compile=True)
    assert resumed.global_step == 6
    with pytest.raises(Exception, match="compile"):  # the eager run is not the compiled one: named, not silent
        run(codes_dir, tmp_path / "compiled", model_config_file, max_steps=8, resume="latest")
