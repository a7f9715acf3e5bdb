"""Parity of the converted VQModel with the reference LlamaGen tokenizer (golden fixtures, float32)."""

import pytest
import torch

from masc_hf.errors import MASCError
from masc_hf.vq import decode_ids, encode_images, load_llamagen_vq

IMAGE_ATOL = 1e-4  # diffusers attends with SDPA, the reference with bmm + softmax
LATENT_ATOL = 1e-5


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return (a - b).abs().max().item()


@pytest.fixture(scope="module")
def encoded_ids(vqmodel, vq_io):
    return encode_images(vqmodel, vq_io["images"])


@pytest.fixture(scope="module")
def decoded(vqmodel, vq_io):
    return decode_ids(vqmodel, vq_io["code_indices"])  # [2, 16]: a 4 x 4 grid per image


def test_encoder_latents_and_quant(vqmodel, vq_io):
    with torch.no_grad():
        latents = vqmodel.encode(vq_io["images"]).latents
        quant, _, (_, _, indices) = vqmodel.quantize(latents)
    assert max_diff(latents, vq_io["latent"]) <= LATENT_ATOL
    assert max_diff(quant, vq_io["quant"]) <= LATENT_ATOL
    assert torch.equal(indices, vq_io["indices"])


def test_encode_images_gives_reference_indices(encoded_ids, vq_io):
    assert encoded_ids.dtype == torch.int64 and encoded_ids.shape == (2, 16)
    assert torch.equal(encoded_ids.reshape(-1), vq_io["indices"])  # reference order: (batch, row, column)


def test_reconstructions(vqmodel, vq_io, encoded_ids):
    with torch.no_grad():
        forward = vqmodel(vq_io["images"]).sample
    assert max_diff(forward, vq_io["reconstructions"]) <= IMAGE_ATOL
    assert max_diff(decode_ids(vqmodel, encoded_ids), vq_io["reconstructions"]) <= IMAGE_ATOL


def test_decode_ids_matches_decode_code(vqmodel, vq_io, decoded):
    assert decoded.shape == (2, 3, 64, 64)
    assert max_diff(decoded, vq_io["decoded"]) <= IMAGE_ATOL
    first = vq_io["code_indices"][:1]
    assert max_diff(decode_ids(vqmodel, first.reshape(1, 4, 4)), vq_io["decoded"][:1]) <= IMAGE_ATOL
    assert torch.equal(decode_ids(vqmodel, first, grid_size=(4, 4)), decode_ids(vqmodel, first.reshape(1, 4, 4)))


def test_decode_ids_without_lookup_from_codebook(converted_vq_dir, vq_io):
    from diffusers import VQModel

    plain = VQModel.from_pretrained(converted_vq_dir, lookup_from_codebook=False).eval()
    assert max_diff(decode_ids(plain, vq_io["code_indices"][:1]), vq_io["decoded"][:1]) <= IMAGE_ATOL


def test_in_memory_conversion(vq_fixtures, vq_io):
    in_memory = load_llamagen_vq(vq_fixtures / "model.safetensors", vq_fixtures / "config.json")
    assert not in_memory.training
    assert max_diff(decode_ids(in_memory, vq_io["code_indices"][:1]), vq_io["decoded"][:1]) <= IMAGE_ATOL


@pytest.mark.parametrize(
    "ids, grid_size, match",
    [
        (torch.tensor([[0, 1, 2, 256]]), None, r"\[0, 256\).*\[0, 256\]"),
        (torch.tensor([[0, -1, 2, 3]]), None, r"\[-1, 3\]"),
        (torch.zeros(1, 6, dtype=torch.long), None, "square grid"),
        (torch.zeros(1, 6, dtype=torch.long), (2, 2), "does not hold 6"),
        (torch.zeros(1, 4), None, "integer tensor"),
    ],
)
def test_decode_ids_rejects_bad_ids(vqmodel, ids, grid_size, match):
    with pytest.raises(MASCError, match=match):
        decode_ids(vqmodel, ids, grid_size=grid_size)


def test_encode_images_rejects_bad_shapes(vqmodel):
    with pytest.raises(MASCError, match="multiples of 16"):
        encode_images(vqmodel, torch.zeros(1, 3, 40, 64))
    with pytest.raises(MASCError, match=r"\[B, 3, H, W\]"):
        encode_images(vqmodel, torch.zeros(3, 64, 64))
