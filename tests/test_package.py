"""Package-level promises: light imports, Auto registration in either import order, README commands."""

import subprocess
import sys

import pytest


def run_python(code: str) -> str:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_cluster_maps_never_import_torch():
    out = run_python(
        "import sys, numpy as np, masc_hf\n"
        "m = masc_hf.build_cluster_map(np.random.default_rng(0).normal(size=(50, 4)), 5)\n"
        "print(m.num_clusters, 'torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    assert out.split() == ["5", "False", "False"]


def test_cli_help_and_build_map_never_import_torch(tmp_path):
    codebook = tmp_path / "codebook.npy"
    out = run_python(
        "import sys, numpy as np\n"
        f"np.save({str(codebook)!r}, np.random.default_rng(0).normal(size=(40, 4)))\n"
        "from masc_hf.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('torch after help:', 'torch' in sys.modules)\n"
        f"code = main(['build-map', '--codebook', {str(codebook)!r}, '--k', '4', '--out', {str(tmp_path / 'map')!r}])\n"
        "print('torch after build-map:', code, 'torch' in sys.modules)\n"
    )
    assert "torch after help: False" in out
    assert "torch after build-map: 0 False" in out
    assert (tmp_path / "map" / "cluster_map_config.json").is_file() and (tmp_path / "map" / "cluster_map.safetensors").is_file()


@pytest.mark.parametrize("order", ["masc_hf first", "transformers first"])
def test_automodel_finds_our_model_type(order, tmp_path):
    imports = "import masc_hf\nfrom transformers import AutoConfig, AutoModel\n"
    if order == "transformers first":
        imports = "from transformers import AutoConfig, AutoModel\nimport masc_hf\n"
    out = run_python(
        imports
        + "from masc_hf.models import LlamaGenConfig, LlamaGenForImageGeneration\n"
        + "cfg = LlamaGenConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=16, num_classes=3, block_size=4, multiple_of=32)\n"
        + f"LlamaGenForImageGeneration(cfg).save_pretrained({str(tmp_path / 'm')!r})\n"
        + f"print(type(AutoModel.from_pretrained({str(tmp_path / 'm')!r})).__name__)\n"
    )
    assert out.strip() == "LlamaGenForImageGeneration"


def test_accelerate_configs_parse():
    from pathlib import Path

    from accelerate.commands.config.config_args import load_config_from_file

    configs = sorted((Path(__file__).resolve().parents[1] / "recipes" / "configs").glob("*.yaml"))
    assert len(configs) >= 4
    kinds = {p.stem: load_config_from_file(str(p)) for p in configs}
    assert kinds["8xh100_fsdp"].fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "LlamaGenDecoderLayer"
    assert kinds["2x8xh100_ddp"].num_machines == 2 and kinds["2x8xh100_ddp"].num_processes == 16
    from masc_hf.models import LlamaGenForImageGeneration

    assert LlamaGenForImageGeneration._no_split_modules == ["LlamaGenDecoderLayer"]


def test_old_import_paths_still_work_for_one_release():
    """Modules that moved (saved pipelines name their components' modules) keep their old paths."""
    import warnings

    from masc_hf.models.llamagen.modeling_llamagen import LlamaGenForImageGeneration
    from masc_hf.models.modeling_llamagen import LlamaGenForImageGeneration as old_model
    from masc_hf.vq.convert_llamagen import convert_llamagen_vq

    assert old_model is LlamaGenForImageGeneration
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        from masc_hf.tokenizers import load_codebook_from_vqmodel
        from masc_hf.tokenizers.convert_vq import convert_llamagen_vq as old_convert
    assert old_convert is convert_llamagen_vq and callable(load_codebook_from_vqmodel)
    from masc_hf.clustering import LLAMAGEN_CODEBOOK_KEY, read_codebook_file
    from masc_hf.vq.codebook import CODEBOOK_KEY
    from masc_hf.vq.codebook import read_codebook_file as new_reader

    assert read_codebook_file is new_reader and LLAMAGEN_CODEBOOK_KEY == CODEBOOK_KEY


@pytest.mark.parametrize("first", ["import masc_hf.vq.dual_codebook", "import masc_hf, diffusers.loaders.peft"])
def test_diffusers_first_still_registers_complete_models(first):
    """diffusers imports transformers' Auto classes from inside transformers' half-imported modeling_utils;
    our models must be built after it is complete (else the decoder layers lose gradient checkpointing)."""
    out = run_python(
        first + "\n"
        "from transformers import AutoConfig\n"
        "from transformers.modeling_layers import GradientCheckpointingLayer\n"
        "from masc_hf.models.llamagen import LlamaGenDecoderLayer\n"
        "from masc_hf.models.iar2 import IAR2DecoderLayer\n"
        "print(issubclass(LlamaGenDecoderLayer, GradientCheckpointingLayer), issubclass(IAR2DecoderLayer, GradientCheckpointingLayer))\n"
        "print(type(AutoConfig.for_model('masc_iar2')).__name__)\n"
    )
    assert out.split() == ["True", "True", "IAR2Config"]
