"""The converted golden fixtures as pipeline components (tiny GPT: 10 classes, 8x8 tokens; tiny VQ: 256 x 8)."""

import pytest

from masc_hf import build_cluster_map
from masc_hf.models import LlamaGenForImageGeneration
from masc_hf.models.llamagen.convert_llamagen import convert_llamagen_checkpoint, load_config_file
from masc_hf.vq.codebook import load_codebook_from_vqmodel
from masc_hf.vq.convert_llamagen import convert_llamagen_vq


@pytest.fixture(scope="session")
def parts(llamagen_fixtures, tmp_path_factory):
    from diffusers import VQModel

    root = tmp_path_factory.mktemp("parts")
    vq_dir = convert_llamagen_vq(llamagen_fixtures / "vq" / "model.safetensors", root / "vq", config=llamagen_fixtures / "vq" / "config.json")
    vqvae = VQModel.from_pretrained(vq_dir).eval()
    config = load_config_file(llamagen_fixtures / "gpt" / "config.json")
    flat_dir = convert_llamagen_checkpoint(llamagen_fixtures / "gpt" / "model.safetensors", root / "flat", config)
    flat = LlamaGenForImageGeneration.from_pretrained(flat_dir).eval()
    cluster_map = build_cluster_map(load_codebook_from_vqmodel(vqvae), 64, compute_quality=False)
    masc_dir = convert_llamagen_checkpoint(llamagen_fixtures / "gpt" / "model.safetensors", root / "masc", config, cluster_map=cluster_map)
    masc = LlamaGenForImageGeneration.from_pretrained(masc_dir).eval()
    return {"vqvae": vqvae, "flat": flat, "masc": masc, "cluster_map": cluster_map}


