"""Conversion of original LlamaGen checkpoints: key coverage of every preset, formats, MASC start, CLI, errors."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from masc_hf.cli import main
from masc_hf.errors import CheckpointError, ClusterMapMismatchError
from masc_hf.models import LLAMAGEN_PRESETS, LlamaGenConfig, LlamaGenForImageGeneration
from masc_hf.models.convert_llamagen import (
    convert_llamagen_checkpoint,
    convert_state_dict,
    expected_shapes,
    load_original_state_dict,
    original_key_map,
)

GPT_MODELS = ["GPT-B", "GPT-L", "GPT-XL", "GPT-XXL", "GPT-3B"]


@pytest.fixture(scope="module")
def shapes(llamagen_fixtures):
    return json.loads((llamagen_fixtures / "shapes.json").read_text())["models"]


def test_every_shapes_json_gpt_is_a_preset(shapes):
    assert sorted(name for name in shapes if name.startswith("GPT")) == sorted(GPT_MODELS)
    assert sorted(LLAMAGEN_PRESETS) == sorted(f"{name}-{px}" for name in GPT_MODELS for px in (256, 384))


@pytest.mark.parametrize("name", GPT_MODELS)
@pytest.mark.parametrize("pixels", [256, 384])
def test_preset_matches_reference_layout_and_parameter_count(shapes, name, pixels):
    reference = shapes[name]
    config = LlamaGenConfig.from_preset(f"{name}-{pixels}")
    assert config.block_size == {256: 256, 384: 576}[pixels]
    assert config.head_dim == reference["derived"]["head_dim"]
    assert config.intermediate_size == reference["derived"]["ffn_hidden_dim"]
    assert config.to_dict() == LlamaGenConfig.from_model_args(reference["model_args"], block_size=config.block_size).to_dict()
    with torch.device("meta"):
        model = LlamaGenForImageGeneration(config)
    assert model.num_parameters() == reference["num_parameters"]
    cos_rows, pairs, _ = reference["not_in_state_dict"]["freqs_cis"]["shape"]
    assert model.rotary_emb.cos.shape == (cos_rows + (config.block_size - 256), pairs)

    # every original key maps to exactly one of ours, with the same shape: no missing, no unexpected
    entries = reference["state_dict"]
    mapping = original_key_map([entry["key"] for entry in entries])
    ours = expected_shapes(config)
    assert len(mapping) == len(entries) == reference["num_state_dict_keys"]
    assert sorted(mapping.values()) == sorted(ours)
    for entry in entries:
        assert ours[mapping[entry["key"]]] == tuple(entry["shape"]), entry["key"]
    # and the converter accepts the full layout (shape-only meta tensors), freqs_cis included
    state = {entry["key"]: torch.empty(entry["shape"], device="meta") for entry in entries}
    state["freqs_cis"] = torch.empty(reference["not_in_state_dict"]["freqs_cis"]["shape"], device="meta")
    assert set(convert_state_dict(state, config)) == set(ours)


def test_pt_checkpoints_in_every_wrapping_convert_to_the_same_weights(gpt_fixtures, tiny_config, converted_gpt_dir, tmp_path):
    original = load_file(gpt_fixtures / "model.safetensors")
    expected = load_file(converted_gpt_dir / "model.safetensors")
    wrappings = {
        "model": {"model": {**original, "freqs_cis": torch.zeros(65, 8, 2)}, "steps": 10},
        "ema": {"ema": original, "args": {"lr": 1.0}},
        "module": {"module": {f"module.{k}": v for k, v in original.items()}},
        "bare": original,
    }
    for name, checkpoint in wrappings.items():
        torch.save(checkpoint, tmp_path / f"{name}.pt")
        out = convert_llamagen_checkpoint(tmp_path / f"{name}.pt", tmp_path / name, tiny_config)
        converted = load_file(out / "model.safetensors")
        assert converted.keys() == expected.keys(), name
        assert all(torch.equal(converted[k], expected[k]) for k in expected), name
    both = {"model": original, "ema": {k: v + 1 for k, v in original.items()}}
    torch.save(both, tmp_path / "both.pt")
    assert torch.equal(load_original_state_dict(tmp_path / "both.pt")["norm.weight"], original["norm.weight"])
    assert torch.equal(load_original_state_dict(tmp_path / "both.pt", "ema")["norm.weight"], original["norm.weight"] + 1)


def test_converted_weights_are_the_renamed_originals(gpt_fixtures, converted_gpt_dir):
    original = load_file(gpt_fixtures / "model.safetensors")
    converted = load_file(converted_gpt_dir / "model.safetensors")
    assert torch.equal(converted["layers.1.self_attn.qkv_proj.weight"], original["layers.1.attention.wqkv.weight"])
    assert torch.equal(converted["lm_head.weight"], original["output.weight"])
    assert torch.equal(converted["class_embedding.weight"], original["cls_embedding.embedding_table.weight"])
    assert len(converted) == len(original) == 18


def test_shape_mismatch_names_key_shapes_and_fix(gpt_fixtures, tmp_path):
    with pytest.raises(CheckpointError) as err:
        convert_llamagen_checkpoint(gpt_fixtures / "model.safetensors", tmp_path / "out", LlamaGenConfig.from_preset("GPT-B"))
    message = str(err.value)
    assert "cls_embedding.embedding_table.weight" in message and "[11, 64]" in message and "[1001, 768]" in message
    assert "preset" in message
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == []  # nothing half-written


def test_missing_and_unexpected_keys_are_refused(gpt_fixtures, tiny_config, tmp_path):
    original = load_file(gpt_fixtures / "model.safetensors")
    missing = {k: v for k, v in original.items() if not k.startswith("layers.1.")}
    save_file(missing, str(tmp_path / "missing.safetensors"))
    with pytest.raises(CheckpointError, match="lacks 7 weight"):
        convert_llamagen_checkpoint(tmp_path / "missing.safetensors", tmp_path / "a", tiny_config)
    save_file({**original, "adapter.weight": torch.zeros(2)}, str(tmp_path / "extra.safetensors"))
    with pytest.raises(CheckpointError, match="adapter.weight"):
        convert_llamagen_checkpoint(tmp_path / "extra.safetensors", tmp_path / "b", tiny_config)
    torch.save({"optimizer": {"lr": 1}}, tmp_path / "opt.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        convert_llamagen_checkpoint(tmp_path / "opt.pt", tmp_path / "c", tiny_config)
    with pytest.raises(CheckpointError, match="does not exist"):
        convert_llamagen_checkpoint(tmp_path / "nope.pt", tmp_path / "d", tiny_config)


def test_existing_output_needs_overwrite(gpt_fixtures, tiny_config, tmp_path):
    out = convert_llamagen_checkpoint(gpt_fixtures / "model.safetensors", tmp_path / "out", tiny_config)
    with pytest.raises(CheckpointError, match="overwrite"):
        convert_llamagen_checkpoint(gpt_fixtures / "model.safetensors", out, tiny_config)
    convert_llamagen_checkpoint(gpt_fixtures / "model.safetensors", out, tiny_config, overwrite=True, dtype=torch.bfloat16)
    assert load_file(out / "model.safetensors")["norm.weight"].dtype == torch.bfloat16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory left behind


def test_overwrite_never_deletes_foreign_files(gpt_fixtures, tiny_config, tmp_path):
    out = convert_llamagen_checkpoint(gpt_fixtures / "model.safetensors", tmp_path / "out", tiny_config)
    (out / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(CheckpointError, match="did not write \\(notes.txt\\).*another --out"):
        convert_llamagen_checkpoint(gpt_fixtures / "model.safetensors", out, tiny_config, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_converted_directory_gets_the_usual_permissions(gpt_fixtures, tiny_config, tmp_path):
    import os
    import stat

    old = os.umask(0o022)
    try:
        out = convert_llamagen_checkpoint(gpt_fixtures / "model.safetensors", tmp_path / "out", tiny_config)
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o755  # not mkdtemp's 0o700
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == dict.fromkeys(
        ["config.json", "generation_config.json", "model.safetensors"], 0o644
    )


def test_masc_start_copies_the_body_and_reinitialises_the_vocabulary(gpt_fixtures, tiny_config, tiny_cluster_map, tmp_path):
    out = convert_llamagen_checkpoint(gpt_fixtures / "model.safetensors", tmp_path / "masc", tiny_config, cluster_map=tiny_cluster_map)
    config = LlamaGenConfig.from_pretrained(out)
    assert (config.vocab_size, config.fine_vocab_size) == (16, 256)
    assert config.cluster_map_fingerprint == tiny_cluster_map.fingerprint
    original = load_file(gpt_fixtures / "model.safetensors")
    converted = load_file(out / "model.safetensors")
    assert converted["embed_tokens.weight"].shape == converted["lm_head.weight"].shape == (16, 64)
    assert torch.equal(converted["layers.0.mlp.down_proj.weight"], original["layers.0.feed_forward.w2.weight"])
    assert torch.equal(converted["class_embedding.weight"], original["cls_embedding.embedding_table.weight"])
    std = converted["embed_tokens.weight"].std().item()
    assert 0.05 < std < 0.2  # N(0, initializer_range = 0.1)
    from transformers import AutoModel

    from masc_hf.pipelines.pairing import check_map_fits_model

    model = AutoModel.from_pretrained(out)
    check_map_fits_model(tiny_cluster_map, model)
    fine = tiny_cluster_map.decode(model.generate([1], guidance_scale=1.0, top_k=1), generator=0)
    assert fine.shape == (1, 64) and fine.max() < 256


def test_masc_start_refuses_a_map_of_another_codebook_size(gpt_fixtures, tiny_codebook, tmp_path):
    import masc_hf

    small = masc_hf.build_cluster_map(tiny_codebook[:100], 8, compute_quality=False)
    config = LlamaGenConfig.from_model_args(json.loads((gpt_fixtures / "config.json").read_text()))
    with pytest.raises(ClusterMapMismatchError, match="N=100"):
        convert_llamagen_checkpoint(gpt_fixtures / "model.safetensors", tmp_path / "m", config, cluster_map=small)


def test_cli_convert_llamagen(gpt_fixtures, gpt_forward, tiny_cluster_map, tmp_path, capsys):
    import masc_hf  # noqa: F401
    from transformers import AutoModel

    out = tmp_path / "cli"
    assert main(["convert-llamagen", "--checkpoint", str(gpt_fixtures / "model.safetensors"), "--config", str(gpt_fixtures / "config.json"), "--out", str(out)]) == 0
    model = AutoModel.from_pretrained(out).eval()
    logits = model(input_ids=gpt_forward["idx"], class_labels=gpt_forward["cond_idx"]).logits
    assert (logits - gpt_forward["logits"]).abs().max() <= 1e-4

    tiny_cluster_map.save_pretrained(tmp_path / "map")
    args = ["convert-llamagen", "--checkpoint", str(gpt_fixtures / "model.safetensors"), "--config", str(gpt_fixtures / "config.json")]
    assert main([*args, "--out", str(tmp_path / "masc"), "--cluster-map", str(tmp_path / "map")]) == 0
    assert LlamaGenConfig.from_pretrained(tmp_path / "masc").vocab_size == 16

    capsys.readouterr()
    assert main(["convert-llamagen", "--checkpoint", str(gpt_fixtures / "model.safetensors"), "--preset", "GPT-XL-384", "--out", str(tmp_path / "x")]) == 2
    assert "shape mismatch" in capsys.readouterr().err
