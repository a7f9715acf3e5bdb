"""Conversion of LlamaGen VQ checkpoints into diffusers VQModel directories."""

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from masc_hf.cli import main
from masc_hf.errors import CheckpointError
from masc_hf.vq import LLAMAGEN_VQ_PRESETS, LlamaGenVQConfig, convert_llamagen_vq, convert_llamagen_vq_state_dict
from masc_hf.vq.convert_llamagen import diffusers_vq_key, expected_vq_shapes, llamagen_vq_key

CODEBOOK_USED = "quantize.codebook_used"


@pytest.fixture(scope="module")
def fixture_state_dict(vq_fixtures):
    return load_file(vq_fixtures / "model.safetensors")


@pytest.fixture(scope="module")
def tiny_config(vq_fixtures):
    return LlamaGenVQConfig.from_json(vq_fixtures / "config.json")


# ------------------------------------------------------------------ full-size layouts


@pytest.mark.parametrize("name", ["VQ-16", "VQ-8"])
def test_every_full_size_key_is_mapped(llamagen_fixtures, name):
    layout = json.loads((llamagen_fixtures / "shapes.json").read_text())["models"][name]
    preset = LLAMAGEN_VQ_PRESETS[name]
    args = layout["model_args"]
    assert list(preset.ch_mult) == args["encoder_ch_mult"] == args["decoder_ch_mult"]
    assert (preset.z_channels, preset.codebook_size, preset.codebook_embed_dim) == (args["z_channels"], args["codebook_size"], args["codebook_embed_dim"])
    assert preset.ch == layout["encoder_decoder_kwargs"]["ch"]

    # Meta tensors: the real conversion code runs on the full layout without allocating memory
    # (the codebook normalisation needs values, so it is switched off here).
    state_dict = {e["key"]: torch.empty(e["shape"], device="meta") for e in layout["state_dict"]}
    assert len(state_dict) == layout["num_state_dict_keys"]
    converted = convert_llamagen_vq_state_dict(state_dict, replace(preset, codebook_l2_norm=False))

    expected = expected_vq_shapes(preset)
    assert set(converted) == set(expected)  # no missing, no unexpected keys
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected
    assert CODEBOOK_USED in state_dict and len(converted) == len(state_dict) - 1
    assert sum(v.numel() for v in converted.values()) == layout["num_parameters"]


def test_key_mapping_round_trips(fixture_state_dict):
    for key in fixture_state_dict:
        if key != CODEBOOK_USED:
            assert llamagen_vq_key(diffusers_vq_key(key)) == key
    assert diffusers_vq_key("encoder.conv_blocks.2.res.0.nin_shortcut.weight") == "encoder.down_blocks.2.resnets.0.conv_shortcut.weight"
    assert diffusers_vq_key("decoder.conv_blocks.0.attn.2.proj_out.bias") == "decoder.up_blocks.0.attentions.2.to_out.0.bias"
    assert diffusers_vq_key("encoder.mid.2.norm1.weight") == "encoder.mid_block.resnets.1.norm1.weight"
    assert diffusers_vq_key("decoder.conv_blocks.3.upsample.conv.weight") == "decoder.up_blocks.3.upsamplers.0.conv.weight"
    assert diffusers_vq_key("encoder.norm_out.bias") == "encoder.conv_norm_out.bias"
    assert diffusers_vq_key(CODEBOOK_USED) is None


# ------------------------------------------------------------------ writing


def test_converted_directory(converted_vq_dir, vqmodel, fixture_state_dict):
    assert sorted(p.name for p in converted_vq_dir.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert not [p for p in converted_vq_dir.parent.iterdir() if p != converted_vq_dir]  # no staging left behind
    config = vqmodel.config
    assert (config.num_vq_embeddings, config.vq_embed_dim, config.latent_channels) == (256, 8, 16)
    assert list(config.block_out_channels) == [32] * 5 and config.layers_per_block == 2
    assert config.lookup_from_codebook and config.scaling_factor == 1.0
    assert list(config.down_block_types)[-1] == "AttnDownEncoderBlock2D"
    assert list(config.up_block_types)[0] == "AttnUpDecoderBlock2D"

    weights = load_file(converted_vq_dir / "diffusion_pytorch_model.safetensors")
    assert len(weights) == len(fixture_state_dict) - 1 and not any("codebook_used" in k for k in weights)
    codebook = weights["quantize.embedding.weight"]
    torch.testing.assert_close(codebook.norm(dim=1), torch.ones(256), atol=1e-6, rtol=0)
    torch.testing.assert_close(codebook, torch.nn.functional.normalize(fixture_state_dict["quantize.embedding.weight"], dim=-1), atol=1e-7, rtol=0)
    q = fixture_state_dict["encoder.mid.1.q.weight"]
    assert torch.equal(weights["encoder.mid_block.attentions.0.to_q.weight"], q[:, :, 0, 0])


@pytest.mark.parametrize("wrapper", ["model", "ema", "state_dict", None])
def test_torch_checkpoint(tmp_path, fixture_state_dict, vq_fixtures, converted_vq_dir, wrapper):
    ckpt = tmp_path / "vq.pt"
    payload = dict(fixture_state_dict) if wrapper is None else {wrapper: fixture_state_dict, "steps": 7}
    if wrapper == "ema":  # ema wins over model, as in LlamaGen's scripts
        payload["model"] = {k: torch.zeros_like(v) for k, v in fixture_state_dict.items()}
    torch.save(payload, ckpt)
    out = convert_llamagen_vq(ckpt, tmp_path / "out", config=vq_fixtures / "config.json")
    ours = load_file(out / "diffusion_pytorch_model.safetensors")
    reference = load_file(converted_vq_dir / "diffusion_pytorch_model.safetensors")
    assert ours.keys() == reference.keys()
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_pickled_objects_are_refused(tmp_path, fixture_state_dict):
    import argparse

    ckpt = tmp_path / "vq.pt"
    torch.save({"model": fixture_state_dict, "args": argparse.Namespace(lr=1)}, ckpt)
    with pytest.raises(CheckpointError, match="weights_only"):
        convert_llamagen_vq(ckpt, tmp_path / "out")
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ errors


def test_default_architecture_is_vq16(tmp_path, vq_fixtures):
    with pytest.raises(CheckpointError, match=r"architecture VQ-16 .*wrong shape \(encoder\.conv_in\.weight is \[32, 3, 3, 3\], expected \[128, 3, 3, 3\].*--config"):
        convert_llamagen_vq(vq_fixtures / "model.safetensors", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []  # nothing written, no staging directory left


def test_unknown_key(fixture_state_dict, tiny_config):
    state_dict = dict(fixture_state_dict, **{"encoder.conv_blocks.0.res.0.norm3.weight": torch.ones(32), "discriminator.w": torch.ones(1)})
    with pytest.raises(CheckpointError, match=r"2 key\(s\).*not part of a LlamaGen VQ.*norm3.*discriminator\.w.*tokenizer's state dict"):
        convert_llamagen_vq_state_dict(state_dict, tiny_config)


def test_missing_key_named_in_original_layout(fixture_state_dict, tiny_config):
    state_dict = {k: v for k, v in fixture_state_dict.items() if k not in ("decoder.conv_blocks.0.attn.2.q.weight", "encoder.mid.2.conv1.bias")}
    with pytest.raises(CheckpointError, match=r"2 tensor\(s\) are missing \(encoder\.mid\.2\.conv1\.bias, decoder\.conv_blocks\.0\.attn\.2\.q\.weight\)"):
        convert_llamagen_vq_state_dict(state_dict, tiny_config)


def test_codebook_size_mismatch(fixture_state_dict, tiny_config):
    with pytest.raises(CheckpointError, match=r"1 tensor\(s\) have the wrong shape \(quantize\.embedding\.weight is \[256, 8\], expected \[512, 8\]\)"):
        convert_llamagen_vq_state_dict(fixture_state_dict, replace(tiny_config, codebook_size=512))


@pytest.mark.parametrize(
    "raw, match",
    [
        ({"model_args": {"encoder_ch_mult": [1, 1, 2], "decoder_ch_mult": [1, 2, 2]}}, "shares block_out_channels"),
        ({"model_args": {"codebook_sise": 4}}, r"unknown field model_args\.codebook_sise"),
        ({"ch_mult": [2, 2]}, "must start with 1"),
        ({"ch": 48}, "multiple of 32"),
        ({"codebook_size": 0}, "codebook_size must be a positive integer"),
        ({"model_args": {"z_channels": 16}, "encoder_kwargs": {"z_channels": 32}}, "contradicts model_args.z_channels"),
        ({"norm_type": "batch"}, "norm_type"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_config(raw, match):
    with pytest.raises(CheckpointError, match=match):
        LlamaGenVQConfig.from_dict(raw)


def test_config_layouts(vq_fixtures, tiny_config):
    assert tiny_config == LlamaGenVQConfig(codebook_size=256, ch=32, ch_mult=(1, 1, 1, 1, 1), z_channels=16)
    flat = {"codebook_size": 256, "codebook_embed_dim": 8, "ch": 32, "ch_mult": [1] * 5, "z_channels": 16, "commit_loss_beta": 0.25}
    assert LlamaGenVQConfig.from_dict(flat) == tiny_config
    assert LLAMAGEN_VQ_PRESETS["VQ-16"].downsample_factor == 16 and LLAMAGEN_VQ_PRESETS["VQ-8"].downsample_factor == 8


def test_bad_config_file(tmp_path, vq_fixtures):
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(CheckpointError, match="not readable JSON"):
        convert_llamagen_vq(vq_fixtures / "model.safetensors", tmp_path / "out", config=bad)
    with pytest.raises(CheckpointError, match="config file not found"):
        convert_llamagen_vq(vq_fixtures / "model.safetensors", tmp_path / "out", config=tmp_path / "missing.json")


def test_existing_output(tmp_path, vq_fixtures):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(CheckpointError, match="--overwrite"):
        convert_llamagen_vq(vq_fixtures / "model.safetensors", out, config=vq_fixtures / "config.json")
    assert (out / "keep.txt").exists()
    with pytest.raises(CheckpointError, match="did not write \\(keep.txt\\)"):  # --overwrite replaces only our own output
        convert_llamagen_vq(vq_fixtures / "model.safetensors", out, config=vq_fixtures / "config.json", overwrite=True)
    assert (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    convert_llamagen_vq(vq_fixtures / "model.safetensors", out, config=vq_fixtures / "config.json")  # an empty directory
    convert_llamagen_vq(vq_fixtures / "model.safetensors", out, config=vq_fixtures / "config.json", overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


# ------------------------------------------------------------------ CLI


def test_cli_convert_vq(tmp_path, vq_fixtures, capsys):
    from diffusers import VQModel

    out = tmp_path / "vq"
    argv = ["convert-vq", "--checkpoint", str(vq_fixtures / "model.safetensors"), "--config", str(vq_fixtures / "config.json"), "--out", str(out)]
    assert main(argv) == 0
    assert VQModel.from_pretrained(out).config.num_vq_embeddings == 256
    assert main(argv) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(argv + ["--overwrite"]) == 2  # a file conversion does not write: never deleted
    assert "notes.txt" in capsys.readouterr().err and (out / "notes.txt").read_text() == "mine"


def test_cli_reports_shape_mismatch(tmp_path, vq_fixtures, capsys):
    argv = ["convert-vq", "--checkpoint", str(vq_fixtures / "model.safetensors"), "--config", "VQ-8", "--out", str(tmp_path / "vq")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("masc-hf convert-vq: error:")
    assert "64 key(s) are not in this architecture (decoder.conv_blocks.3" in err and "--config" in err
