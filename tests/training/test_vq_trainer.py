"""The small VQ tokenizer trainer: learning, the l2-normalised lookup, tokenizer helpers, save/load,
determinism, dead codes, evaluation, bad input. Tiny models on generated images."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from masc_hf.errors import DataError
from masc_hf.vq.tokens import decode_ids, encode_images
from masc_hf.training.vq_trainer import (
    VQ_TRAINING_PRESETS,
    VQTrainingConfig,
    VQTrainingError,
    evaluate_vq_tokenizer,
    to_vq_input,
    train_vq_tokenizer,
)

# 8x8 model input (a 2x2 grid of tokens), 16 codes of dimension 4
TINY = VQTrainingConfig(
    image_size=8, block_out_channels=(8, 8, 8), latent_channels=8, norm_num_groups=4, num_embeddings=16,
    embed_dim=4, steps=60, batch_size=16, lr=3e-3, warmup_steps=2, reseed_every=5, seed=0,
)


def bar_images(n, seed=0, size=6):
    """uint8 [n, size, size]: one bright horizontal or vertical bar of random position and brightness."""
    rng = np.random.default_rng(seed)
    images = np.zeros((n, size, size), dtype=np.uint8)
    for image in images:
        position, value = rng.integers(0, size), rng.integers(120, 256)
        if rng.random() < 0.5:
            image[position, :] = value
        else:
            image[:, position] = value
    return images


def block_images(n, seed=0):
    """uint8 [n, 8, 8]: each 4x4 quadrant (one token of TINY) has one of four grey levels."""
    levels = np.array([0, 85, 170, 255], dtype=np.uint8)[np.random.default_rng(seed).integers(0, 4, size=(n, 2, 2))]
    return levels.repeat(4, axis=1).repeat(4, axis=2)


@pytest.fixture(scope="module")
def trained():
    return train_vq_tokenizer(block_images(256), TINY, progress=False)


def test_training_lowers_the_loss(trained):
    _, stats = trained
    losses = stats["reconstruction_loss"]
    assert len(losses) == TINY.steps == stats["steps"]
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])
    assert stats["codebook_usage"] == stats["used_codes"] / 16 and stats["used_codes"] >= 8


def test_codebook_rows_stay_unit_length(trained):
    vqmodel, _ = trained
    norms = vqmodel.quantize.embedding.weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(16), atol=1e-5, rtol=0)


def test_plain_diffusers_lookup_picks_the_normalised_nearest_code(trained):
    """Unit rows: argmin |z - e| on the raw latent = argmin |z/|z| - e| (the training lookup)."""
    vqmodel, _ = trained
    images = to_vq_input(block_images(32, seed=1), image_size=8)
    ids = encode_images(vqmodel, images)
    with torch.no_grad():
        latents = F.normalize(vqmodel.encode(images).latents, dim=1)
        _, _, (_, _, normalised_ids) = vqmodel.quantize(latents)
    assert ids.shape == (32, 4)
    assert torch.equal(ids.reshape(-1), normalised_ids.reshape(-1))


def test_encode_decode_round_trip_through_the_tokenizer_helpers(trained):
    vqmodel, _ = trained
    images = to_vq_input(block_images(16, seed=2), image_size=8)
    ids = encode_images(vqmodel, images)
    decoded = decode_ids(vqmodel, ids)
    assert decoded.shape == (16, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(decoded, vqmodel(images).sample)  # diffusers' own forward
    # each reconstruction carries its own image: closer to it than to the other images, on average
    errors = ((decoded[:, None] - images[None]) ** 2).mean(dim=(2, 3, 4))
    off_diagonal = errors[~torch.eye(16, dtype=torch.bool)]
    assert errors.diagonal().mean() < 0.8 * off_diagonal.mean()


def test_save_and_load_round_trip(trained, tmp_path):
    from diffusers import VQModel

    vqmodel, _ = trained
    vqmodel.save_pretrained(tmp_path / "vq")
    loaded = VQModel.from_pretrained(tmp_path / "vq").eval()
    images = to_vq_input(block_images(8, seed=3), image_size=8)
    ids = encode_images(vqmodel, images)
    assert torch.equal(encode_images(loaded, images), ids)
    torch.testing.assert_close(decode_ids(loaded, ids), decode_ids(vqmodel, ids), atol=0, rtol=0)
    assert loaded.config.sample_size == 8 and loaded.config.num_vq_embeddings == 16


def test_deterministic_for_a_seed_and_leaves_the_global_rng_alone():
    images = bar_images(64)
    config = TINY.replace(steps=6)
    state = torch.get_rng_state()
    first, first_stats = train_vq_tokenizer(images, config, progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    second, second_stats = train_vq_tokenizer(images, config, progress=False)
    other, _ = train_vq_tokenizer(images, config, progress=False, seed=1)
    assert first_stats["loss"] == second_stats["loss"]
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not torch.equal(first.quantize.embedding.weight, other.quantize.embedding.weight)


def test_dead_codes_are_reseeded():
    images = bar_images(256)
    kept, kept_stats = train_vq_tokenizer(images, TINY, progress=False, num_embeddings=64, steps=30, reseed_until=0.0)
    reseeded, stats = train_vq_tokenizer(images, TINY, progress=False, num_embeddings=64, steps=30)
    assert kept_stats["reseeded_codes"] == 0 and stats["reseeded_codes"] > 0
    assert stats["used_codes"] > kept_stats["used_codes"]


def test_evaluation_matches_a_direct_computation(trained):
    vqmodel, _ = trained
    images = bar_images(20, seed=4)  # 6x6, padded to 8x8 and compared on the 6x6 centre
    result = evaluate_vq_tokenizer(vqmodel, images, batch_size=7)
    inputs = to_vq_input(images, image_size=8)
    ids = encode_images(vqmodel, inputs)
    recon = decode_ids(vqmodel, ids).clamp(-1, 1)[:, :, 1:7, 1:7]
    mse = ((recon - inputs[:, :, 1:7, 1:7]) / 2).pow(2).mean(dim=(1, 2, 3)).double()
    assert result["mse"] == pytest.approx(float(mse.mean()), rel=1e-5)
    assert result["psnr"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), rel=1e-5)
    assert result["used_codes"] == len(torch.unique(ids))
    assert 1.0 <= result["perplexity"] <= result["used_codes"]


def test_a_torch_dataset_trains_too():
    inputs = to_vq_input(bar_images(32), image_size=8)
    dataset = torch.utils.data.TensorDataset(inputs, torch.zeros(32))
    vqmodel, stats = train_vq_tokenizer(dataset, TINY, progress=False, steps=3)
    assert len(stats["loss"]) == 3 and np.isfinite(stats["loss"]).all()
    assert evaluate_vq_tokenizer(vqmodel, inputs)["psnr"] > 0


def test_to_vq_input_pads_with_background_and_replicates_gray():
    images = np.random.default_rng(5).integers(0, 256, size=(2, 28, 28), dtype=np.uint8)
    tensor = to_vq_input(images)
    assert tensor.shape == (2, 3, 32, 32) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor[:, 1, 2:30, 2:30], torch.from_numpy(images).float() / 127.5 - 1)
    assert torch.equal(tensor[:, 0], tensor[:, 2])
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert (tensor[:, :, border] == -1).all()


def test_presets_describe_the_quickstart_tokenizer():
    for name in ("quickstart", "fast"):
        preset = VQ_TRAINING_PRESETS[name]
        assert preset.image_size == 32 and preset.downsample_factor == 4 and preset.tokens_per_image == 64
        assert preset.num_embeddings == 256 and preset.embed_dim == 8
    assert VQ_TRAINING_PRESETS["fast"].steps < VQ_TRAINING_PRESETS["quickstart"].steps


@pytest.mark.parametrize(
    "images, kwargs, error, match",
    [
        (np.zeros((4, 6, 6), dtype=np.float32), {}, DataError, "uint8"),
        (np.zeros((4, 12, 12), dtype=np.uint8), {}, DataError, "do not fit"),
        (bar_images(4), {"no_such_setting": 1}, VQTrainingError, "no_such_setting"),
        (bar_images(4), {"image_size": 10}, VQTrainingError, "multiple of the downsample factor"),
        (bar_images(4), {"norm_num_groups": 3}, VQTrainingError, "norm_num_groups"),
    ],
)
def test_bad_input_is_refused(images, kwargs, error, match):
    with pytest.raises(error, match=match):
        train_vq_tokenizer(images, TINY, progress=False, **kwargs)


def test_unknown_preset_is_refused():
    with pytest.raises(VQTrainingError, match="quickstart"):
        train_vq_tokenizer(bar_images(4), "huge", progress=False)
