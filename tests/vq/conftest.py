from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def vq_fixtures(llamagen_fixtures) -> Path:
    return llamagen_fixtures / "vq"


@pytest.fixture(scope="session")
def vq_io(vq_fixtures):
    from safetensors.torch import load_file

    return load_file(vq_fixtures / "io.safetensors")


@pytest.fixture(scope="session")
def converted_vq_dir(vq_fixtures, tmp_path_factory) -> Path:
    from masc_hf.vq import convert_llamagen_vq

    out = tmp_path_factory.mktemp("converted") / "tiny-vq"
    return convert_llamagen_vq(vq_fixtures / "model.safetensors", out, config=vq_fixtures / "config.json", sample_size=64)


@pytest.fixture(scope="session")
def vqmodel(converted_vq_dir):
    from diffusers import VQModel

    return VQModel.from_pretrained(converted_vq_dir).eval()
