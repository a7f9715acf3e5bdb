import json
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(scope="session")
def gpt_fixtures(llamagen_fixtures) -> Path:
    return llamagen_fixtures / "gpt"


@pytest.fixture(scope="session")
def gpt_forward(gpt_fixtures):
    from safetensors.torch import load_file

    return load_file(gpt_fixtures / "forward.safetensors")


@pytest.fixture(scope="session")
def gpt_generate(gpt_fixtures):
    from safetensors.torch import load_file

    return load_file(gpt_fixtures / "generate.safetensors")


@pytest.fixture(scope="session")
def tiny_config(gpt_fixtures):
    from masc_hf.models import LlamaGenConfig

    return LlamaGenConfig.from_model_args(json.loads((gpt_fixtures / "config.json").read_text()))


@pytest.fixture(scope="session")
def converted_gpt_dir(gpt_fixtures, tiny_config, tmp_path_factory) -> Path:
    """The tiny reference model converted from its original key names."""
    from masc_hf.models.convert_llamagen import convert_llamagen_checkpoint

    out = tmp_path_factory.mktemp("converted") / "tiny-gpt"
    return convert_llamagen_checkpoint(gpt_fixtures / "model.safetensors", out, tiny_config)


@pytest.fixture(scope="session")
def _tiny_model(converted_gpt_dir):
    import masc_hf.models  # noqa: F401  (registers the Auto classes)
    from transformers import AutoModel

    return AutoModel.from_pretrained(converted_gpt_dir).eval()


@pytest.fixture
def tiny_model(_tiny_model):
    """The converted tiny reference model in eval mode (restored after each test)."""
    yield _tiny_model
    _tiny_model.eval()


@pytest.fixture(scope="session")
def tiny_codebook() -> np.ndarray:
    """A random [256, 8] codebook matching the tiny model's N = 256."""
    return np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_cluster_map(tiny_codebook):
    import masc_hf

    return masc_hf.build_cluster_map(tiny_codebook, 16, compute_quality=False)


@pytest.fixture(scope="session")
def masc_model(tiny_config, tiny_cluster_map):
    """A random MASC model (k = 16 over N = 256) with a non-zero head, so sampling is not uniform."""
    from masc_hf.models import LlamaGenConfig, LlamaGenForImageGeneration

    config = LlamaGenConfig.from_dict(
        {
            **tiny_config.to_dict(),
            "vocab_size": tiny_cluster_map.num_clusters,
            "fine_vocab_size": tiny_cluster_map.num_tokens,
            "cluster_map_fingerprint": tiny_cluster_map.fingerprint,
        }
    )
    torch.manual_seed(0)
    model = LlamaGenForImageGeneration(config).eval()
    torch.nn.init.normal_(model.lm_head.weight, std=0.5)
    return model
