"""The quickstart end to end on a sliver of the real Fashion-MNIST: images -> VQ -> codes -> map ->
LlamaGen training -> MASCPipeline -> samples.png and class consistency. Tiny settings: this checks
the wiring, not the quality (the README's full run does that)."""

import json

import PIL.Image
import pytest

from masc_hf.data.fashion_mnist import FASHION_MNIST_DIR
from masc_hf.quickstart import QuickstartSettings, run_quickstart


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_quickstart_end_to_end_on_real_data(tmp_path):
    settings = QuickstartSettings(
        vq_preset="fast", vq_steps=15, train_examples=600, hidden_size=32, num_layers=1, num_heads=2, steps=6,
        batch_size=32, samples_per_class=2, grid_columns=2, classifier_epochs=0.1,
    )
    report = run_quickstart(tmp_path / "qs", settings=settings, progress=False)
    grid = PIL.Image.open(report["samples"])
    assert grid.size[1] == 10 * 64  # one row per class
    assert 0.0 <= report["class_consistency"] <= 1.0 and report["classifier_test_accuracy"] > 0.3
    saved = json.loads((tmp_path / "qs" / "report.json").read_text())
    assert saved["class_consistency"] == report["class_consistency"]
    from masc_hf import MASCClusterMap, MASCPipeline

    pipe = MASCPipeline.from_pretrained(report["pipeline"])
    assert isinstance(pipe.cluster_map, MASCClusterMap) and pipe.cluster_map.num_clusters == settings.num_clusters
    assert pipe.id2label[9] == "Ankle boot" and pipe.transformer.config.vocab_size == settings.num_clusters


@pytest.mark.skipif(not FASHION_MNIST_DIR.is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_iar2_quickstart_end_to_end_on_real_data(tmp_path):
    from masc_hf.quickstart import IAR2QuickstartSettings

    settings = IAR2QuickstartSettings(
        semantic_steps=8, detail_steps=8, train_examples=600, hidden_size=48, num_layers=1, head_layers=1, num_heads=4, steps=6,
        batch_size=32, samples_per_class=2, grid_columns=2, classifier_epochs=0.1,
    )
    report = run_quickstart(tmp_path / "qs", settings=settings, progress=False, system="iar2")
    assert PIL.Image.open(report["samples"]).size[1] == 10 * 64
    assert report["system"] == "iar2" and 0.0 <= report["class_consistency"] <= 1.0
    assert report["vq"]["semantic_psnr"] < report["vq"]["psnr"]  # the detail codes add what the semantic ones miss
    from masc_hf import DualCodebookVQModel, IAR2Pipeline

    pipe = IAR2Pipeline.from_pretrained(report["pipeline"])
    assert isinstance(pipe.vqvae, DualCodebookVQModel) and pipe.vqvae.codebook_sizes == (16, 64)
    assert pipe.id2label[9] == "Ankle boot" and list(pipe.transformer.generation_config.semantic_guidance) == [1.0, 3.0]
