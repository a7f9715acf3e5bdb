"""IAR2's dual-codebook tokenizer: conversion, parity with the reference fixtures, codebooks, bad input."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import masc_hf
from masc_hf.cli import main
from masc_hf.errors import CheckpointError, CodebookError, MASCError
from masc_hf.vq import DualCodebookVQModel, DualVQConfig, convert_iar2_vq, convert_iar2_vq_state_dict, load_codebook
from masc_hf.vq.convert_iar2 import IAR2_VQ_PRESETS, dual_vq_key, empty_dual_vqmodel, iar2_vq_key

USAGE_BUFFERS = {"quantize.codebook_used", "quantize.codebook_used2"}


@pytest.fixture(scope="module")
def dual_fixtures(iar2_fixtures):
    return iar2_fixtures / "vq"


@pytest.fixture(scope="module")
def reference_state_dict(dual_fixtures):
    return load_file(dual_fixtures / "model.safetensors")


@pytest.fixture(scope="module")
def io(dual_fixtures):
    return load_file(dual_fixtures / "io.safetensors")


@pytest.fixture(scope="module")
def converted_dir(dual_fixtures, tmp_path_factory):
    out = tmp_path_factory.mktemp("iar2") / "tiny-dual-vq"
    return convert_iar2_vq(dual_fixtures / "model.safetensors", out, config=dual_fixtures / "config.json", sample_size=64)


@pytest.fixture(scope="module")
def dual_vq(converted_dir):
    return masc_hf.DualCodebookVQModel.from_pretrained(converted_dir).eval()


# ------------------------------------------------------------------ parity with the reference


def test_ids_are_the_reference_ids(dual_vq, io):
    semantic_ids, detail_ids = dual_vq.encode_ids(io["images"])
    assert semantic_ids.shape == detail_ids.shape == (2, 4, 4)
    assert semantic_ids.dtype == detail_ids.dtype == torch.int64
    assert torch.equal(semantic_ids.reshape(-1), io["semantic_ids"])  # flattened (batch, row, column)
    assert torch.equal(detail_ids.reshape(-1), io["detail_ids"])


@torch.no_grad()
def test_latents_quant_and_images_match(dual_vq, io):
    latents = dual_vq.encode(io["images"]).latents
    torch.testing.assert_close(latents, io["latent"], atol=1e-5, rtol=0)
    out = dual_vq.quantize(latents)
    torch.testing.assert_close(out.latents, io["latent_normalized"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.quant, io["quant"], atol=1e-5, rtol=0)
    torch.testing.assert_close(dual_vq(io["images"]).sample, io["reconstructions"], atol=1e-4, rtol=0)


@torch.no_grad()
def test_decode_ids_matches_decode_code(dual_vq, io):
    semantic, detail = io["code_semantic_ids"], io["code_detail_ids"]  # [2, 16], row-major 4x4 grids
    latent = dual_vq.quantize.lookup(semantic.reshape(2, 4, 4), detail.reshape(2, 4, 4))
    torch.testing.assert_close(latent, io["code_latent"], atol=1e-6, rtol=0)
    images = dual_vq.decode_ids(semantic, detail)  # flat ids: square grid
    torch.testing.assert_close(images, io["decoded"], atol=1e-4, rtol=0)
    torch.testing.assert_close(dual_vq.decode_ids(semantic.reshape(2, 4, 4), detail.reshape(2, 4, 4)), images, atol=0, rtol=0)


@torch.no_grad()
def test_semantic_only_decoding_is_coarser(dual_vq, io):
    """``detail_ids=None`` decodes e_hat_s alone: farther from the latent than e_hat_s + c_d (the fixture
    README measures 0.58 against 0.25 mean distance)."""
    semantic_ids, detail_ids = dual_vq.encode_ids(io["images"])
    z = io["latent_normalized"]
    coarse = dual_vq.quantize.lookup(semantic_ids, None)
    both = dual_vq.quantize.lookup(semantic_ids, detail_ids)
    assert (coarse - z).norm(dim=1).mean() == pytest.approx(0.58, abs=0.01)
    assert (both - z).norm(dim=1).mean() == pytest.approx(0.25, abs=0.01)
    assert dual_vq.decode_ids(semantic_ids, None).shape == (2, 3, 64, 64)


def test_semantic_rows_normalised_detail_rows_raw(dual_vq, reference_state_dict):
    """The fixture's semantic rows are not unit length and its detail rows are shorter than 1: a
    model that forgets to normalise one, or normalises the other, fails the parity tests above."""
    raw_semantic = reference_state_dict["quantize.embedding.weight"]
    assert not torch.allclose(raw_semantic.norm(dim=1), torch.ones(256))
    torch.testing.assert_close(dual_vq.semantic_codebook(), torch.nn.functional.normalize(raw_semantic, dim=1))
    torch.testing.assert_close(dual_vq.detail_codebook(), reference_state_dict["quantize.embedding_second"], atol=0, rtol=0)


def test_straight_through_gradient_reaches_encoder(converted_dir, io):
    model = DualCodebookVQModel.from_pretrained(converted_dir).train()
    out = model.quantize(model.encode(io["images"]).latents)
    loss = model.decode(out.quant).sample.square().mean() + out.codebook_loss + out.commitment_loss
    loss.backward()
    assert model.encoder.conv_in.weight.grad.abs().sum() > 0
    assert model.quantize.semantic_embedding.weight.grad.abs().sum() > 0
    assert model.quantize.detail_embedding.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------ conversion


def test_every_key_of_the_released_tokenizer_is_mapped(iar2_fixtures):
    layout = json.loads((iar2_fixtures / "shapes.json").read_text())["models"]["VQ-16-dual"]
    preset = IAR2_VQ_PRESETS["IAR2-VQ-16"]
    args = layout["model_args"]
    assert (preset.backbone.codebook_size, preset.backbone.codebook_embed_dim, preset.backbone.z_channels) == (
        args["codebook_size"], args["codebook_embed_dim"], args["z_channels"],
    )
    state_dict = {e["key"]: torch.empty(e["shape"], device="meta") for e in layout["state_dict"]}
    assert len(state_dict) == layout["num_state_dict_keys"] == 346
    converted = convert_iar2_vq_state_dict(state_dict, preset)
    expected = {k: tuple(v.shape) for k, v in empty_dual_vqmodel(preset).state_dict().items()}
    assert {k: tuple(v.shape) for k, v in converted.items()} == expected  # strict: nothing missing or extra
    assert set(state_dict) - {iar2_vq_key(k) for k in converted} == USAGE_BUFFERS  # only the counters dropped
    assert sum(v.numel() for v in converted.values()) == layout["num_parameters"] == 71_787_147


def test_key_mapping_round_trips(reference_state_dict):
    for key in set(reference_state_dict) - USAGE_BUFFERS:
        assert iar2_vq_key(dual_vq_key(key)) == key
    assert dual_vq_key("quantize.embedding_second") == "quantize.detail_embedding.weight"
    assert dual_vq_key("quantize.embedding.weight") == "quantize.semantic_embedding.weight"
    assert dual_vq_key("quantize.something_else") is None


def test_config_from_the_fixture(dual_fixtures, dual_vq):
    config = DualVQConfig.from_dict(json.loads((dual_fixtures / "config.json").read_text()))
    assert (config.semantic_codebook_size, config.backbone.codebook_size) == (256, 4096)
    assert dual_vq.codebook_sizes == (256, 4096) and dual_vq.downsample_factor == 16
    assert DualVQConfig.from_dict({**json.loads((dual_fixtures / "config.json").read_text()), "semantic_codebook_size": 64}).semantic_codebook_size == 64


@pytest.mark.parametrize("wrapper", ["model", "ema", None])
def test_torch_checkpoint(tmp_path, reference_state_dict, dual_fixtures, dual_vq, io, wrapper):
    ckpt = tmp_path / "0485000.pt"
    torch.save({wrapper: reference_state_dict, "steps": 485000} if wrapper else reference_state_dict, ckpt)
    out = convert_iar2_vq(ckpt, tmp_path / "out", config=dual_fixtures / "config.json")
    model = DualCodebookVQModel.from_pretrained(out)
    for key, value in dual_vq.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


def test_pickled_objects_are_refused(tmp_path, reference_state_dict, dual_fixtures):
    import argparse

    ckpt = tmp_path / "vq.pt"
    torch.save({"model": reference_state_dict, "args": argparse.Namespace(lr=1)}, ckpt)
    with pytest.raises(CheckpointError, match="weights_only"):
        convert_iar2_vq(ckpt, tmp_path / "out", config=dual_fixtures / "config.json")
    assert not (tmp_path / "out").exists()


def test_save_and_load_round_trip(dual_vq, tmp_path, io):
    dual_vq.save_pretrained(tmp_path / "saved")
    again = DualCodebookVQModel.from_pretrained(tmp_path / "saved")
    assert again.config.num_detail_embeddings == 4096
    assert torch.equal(again.encode_ids(io["images"])[1], dual_vq.encode_ids(io["images"])[1])


# ------------------------------------------------------------------ bad input


def test_plain_llamagen_vq_is_refused(llamagen_fixtures, tmp_path):
    with pytest.raises(CheckpointError, match="no detail codebook.*plain LlamaGen VQ.*convert-vq"):
        convert_iar2_vq(llamagen_fixtures / "vq" / "model.safetensors", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wrong_architecture_names_the_fix(reference_state_dict):
    with pytest.raises(CheckpointError, match=r"does not fit the architecture 256 semantic x 4096 detail.*--config"):
        convert_iar2_vq_state_dict(reference_state_dict)  # tiny weights against the released layout


def test_foreign_keys_are_named(reference_state_dict, dual_fixtures):
    config = DualVQConfig.from_dict(json.loads((dual_fixtures / "config.json").read_text()))
    with pytest.raises(CheckpointError, match="not part of an IAR2 dual-codebook tokenizer: discriminator.conv"):
        convert_iar2_vq_state_dict({**reference_state_dict, "discriminator.conv.weight": torch.zeros(1)}, config)


@pytest.mark.parametrize(
    "semantic, detail, match",
    [
        (torch.full((1, 4, 4), 256), torch.zeros(1, 4, 4, dtype=torch.long), r"semantic_ids must lie in \[0, 256\)"),
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), 4096), r"detail_ids must lie in \[0, 4096\)"),
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.full((1, 4, 4), -1), r"detail_ids must lie in \[0, 4096\)"),
        (torch.zeros(1, 4, 4, dtype=torch.long), torch.zeros(1, 4, 3, dtype=torch.long), "must have the same shape"),
        (torch.zeros(1, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long), "semantic_ids must be an integer tensor"),
        (torch.zeros(1, 15, dtype=torch.long), torch.zeros(1, 15, dtype=torch.long), "do not form a square grid"),
    ],
)
def test_bad_ids(dual_vq, semantic, detail, match):
    with pytest.raises(MASCError, match=match):
        dual_vq.decode_ids(semantic, detail)


def test_bad_images(dual_vq):
    with pytest.raises(MASCError, match=r"multiples of 16"):
        dual_vq.encode_ids(torch.zeros(1, 3, 60, 64))


# ------------------------------------------------------------------ codebooks for MASC maps


def test_codebooks_load_for_cluster_maps(converted_dir, dual_vq, tmp_path):
    semantic, description = load_codebook(converted_dir, tensor="semantic")
    assert "semantic codebook of a DualCodebookVQModel" in description
    np.testing.assert_allclose(semantic, dual_vq.semantic_codebook().numpy(), atol=1e-7)
    np.testing.assert_allclose(np.linalg.norm(semantic, axis=1), 1.0, atol=1e-6)
    detail, _ = load_codebook(converted_dir, tensor="detail")
    assert np.array_equal(detail, dual_vq.detail_codebook().numpy())
    assert np.array_equal(load_codebook(dual_vq, tensor="detail")[0], detail)
    with pytest.raises(CodebookError, match="--tensor semantic or --tensor detail"):
        load_codebook(converted_dir)
    cluster_map = masc_hf.build_cluster_map(semantic, k=16)
    assert cluster_map.num_clusters == 16 and cluster_map.num_tokens == 256


def test_original_dual_checkpoint_codebook_asks_for_conversion(dual_fixtures):
    with pytest.raises(CodebookError, match="convert-iar2-vq"):
        load_codebook(dual_fixtures / "model.safetensors")


def test_cli_build_map_over_the_detail_codebook(converted_dir, tmp_path):
    out = tmp_path / "map"
    assert main(["build-map", "--codebook", str(converted_dir), "--tensor", "detail", "--k", "512", "--out", str(out)]) == 0
    assert masc_hf.MASCClusterMap.from_pretrained(out).num_tokens == 4096


# ------------------------------------------------------------------ CLI


def test_cli_convert_iar2_vq(tmp_path, dual_fixtures, io, capsys):
    out = tmp_path / "vq"
    argv = ["convert-iar2-vq", "--checkpoint", str(dual_fixtures / "model.safetensors"), "--config", str(dual_fixtures / "config.json"), "--out", str(out)]
    assert main(argv) == 0
    model = masc_hf.DualCodebookVQModel.from_pretrained(out)
    assert torch.equal(model.encode_ids(io["images"])[0].reshape(-1), io["semantic_ids"])
    assert main(argv) == 2  # exists, no --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(argv + ["--overwrite"]) == 0


def test_cli_refuses_a_plain_llamagen_vq(tmp_path, llamagen_fixtures, capsys):
    argv = ["convert-iar2-vq", "--checkpoint", str(llamagen_fixtures / "vq" / "model.safetensors"), "--out", str(tmp_path / "vq")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("masc-hf convert-iar2-vq: error:") and err.count("\n") == 1
    assert "convert-vq" in err and not (tmp_path / "vq").exists()
