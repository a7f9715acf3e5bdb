"""Codebook export for cluster maps: from a converted VQModel and from an original checkpoint."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from masc_hf.errors import CodebookError, MASCError
from masc_hf.vq import (
    codebook_source_name,
    export_codebook,
    l2_normalize_rows,
    load_codebook_from_llamagen_checkpoint,
    load_codebook_from_vqmodel,
)


@pytest.fixture(scope="module")
def checkpoint_codebook(vq_fixtures):
    return load_codebook_from_llamagen_checkpoint(vq_fixtures / "model.safetensors")


def test_llamagen_checkpoint_codebook(checkpoint_codebook, vq_fixtures):
    assert checkpoint_codebook.shape == (256, 8) and checkpoint_codebook.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(checkpoint_codebook, axis=1), 1.0, atol=1e-6)
    raw = load_file(vq_fixtures / "model.safetensors")["quantize.embedding.weight"]
    np.testing.assert_allclose(checkpoint_codebook, torch.nn.functional.normalize(raw, dim=-1).numpy(), atol=1e-7, rtol=0)


def test_converted_codebook_is_bit_identical(checkpoint_codebook, converted_vq_dir, vqmodel, tmp_path):
    from_dir = load_codebook_from_vqmodel(converted_vq_dir)
    assert from_dir.dtype == np.float32
    np.testing.assert_array_equal(from_dir, checkpoint_codebook)
    np.testing.assert_array_equal(load_codebook_from_vqmodel(vqmodel), checkpoint_codebook)
    np.testing.assert_array_equal(load_codebook_from_vqmodel(converted_vq_dir / "diffusion_pytorch_model.safetensors"), checkpoint_codebook)
    np.testing.assert_array_equal(export_codebook(vqmodel), checkpoint_codebook)
    pipeline_dir = tmp_path / "pipe"
    (pipeline_dir / "vqvae").mkdir(parents=True)
    (pipeline_dir / "vqvae" / "diffusion_pytorch_model.safetensors").symlink_to(converted_vq_dir / "diffusion_pytorch_model.safetensors")
    np.testing.assert_array_equal(load_codebook_from_vqmodel(pipeline_dir), checkpoint_codebook)
    assert codebook_source_name(pipeline_dir) == "pipe/vqvae"
    assert codebook_source_name(converted_vq_dir) == "tiny-vq"


def test_codebook_is_what_the_decoder_receives(vqmodel, vq_io):
    ids = vq_io["code_indices"][:1, :3]
    rows = vqmodel.quantize.get_codebook_entry(ids.reshape(-1), None).detach().numpy()
    np.testing.assert_array_equal(rows, export_codebook(vqmodel)[ids.reshape(-1).numpy()])


def test_torch_checkpoint_codebook(tmp_path, vq_fixtures, checkpoint_codebook):
    ckpt = tmp_path / "vq_ds16_c2i.pt"
    torch.save({"model": load_file(vq_fixtures / "model.safetensors")}, ckpt)
    np.testing.assert_array_equal(load_codebook_from_llamagen_checkpoint(ckpt), checkpoint_codebook)
    assert codebook_source_name(ckpt) == "vq_ds16_c2i.pt"


def test_bfloat16_checkpoint(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "bf16.safetensors"
    rows = torch.tensor([[3.0, 4.0], [0.0, 0.0]])
    save_file({"quantize.embedding.weight": rows.bfloat16()}, path)
    np.testing.assert_array_equal(load_codebook_from_llamagen_checkpoint(path), np.array([[0.6, 0.8], [0.0, 0.0]], dtype=np.float32))


def test_l2_normalize_rows_keeps_zero_rows():
    out = l2_normalize_rows(np.array([[0.0, 0.0], [1.0, 1.0]]))
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0, 0], [2**-0.5, 2**-0.5]], rtol=1e-7)


def test_errors(llamagen_fixtures, tmp_path):
    with pytest.raises(CodebookError, match="no 'quantize.embedding.weight'.*GPT checkpoints carry no codebook"):
        load_codebook_from_llamagen_checkpoint(llamagen_fixtures / "gpt" / "model.safetensors")
    with pytest.raises(CodebookError, match="not found"):
        load_codebook_from_llamagen_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "codes.npy").write_bytes(b"")
    with pytest.raises(CodebookError, match="unknown checkpoint format '.npy'"):
        load_codebook_from_llamagen_checkpoint(tmp_path / "codes.npy")
    with pytest.raises(CodebookError, match="convert-vq"):
        load_codebook_from_vqmodel(tmp_path)
    (tmp_path / "bad.safetensors").write_bytes(b"garbage")
    with pytest.raises(CodebookError, match="not a readable safetensors"):
        load_codebook_from_llamagen_checkpoint(tmp_path / "bad.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"garbage")
    with pytest.raises(MASCError, match="weights_only"):
        load_codebook_from_llamagen_checkpoint(tmp_path / "bad.pt")


def test_light_import_and_safetensors_path(vq_fixtures, converted_vq_dir):
    code = (
        "import sys, masc_hf.vq as t\n"
        f"a = t.load_codebook_from_llamagen_checkpoint({str(vq_fixtures / 'model.safetensors')!r})\n"
        f"b = t.load_codebook_from_vqmodel({str(converted_vq_dir)!r})\n"
        "assert (a == b).all() and a.shape == (256, 8)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
