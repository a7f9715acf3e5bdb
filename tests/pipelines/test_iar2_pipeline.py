"""IAR2Pipeline: labels -> (semantic, detail) ids -> pixels, saving and loading, seeds, bad components."""

import numpy as np
import pytest
import torch

from masc_hf import DualCodebookVQModel, IAR2Config, IAR2ForImageGeneration, IAR2Pipeline
from masc_hf.errors import MASCError


@pytest.fixture(scope="module")
def pipe(tiny_dual_vq):
    torch.manual_seed(0)
    config = IAR2Config(semantic_vocab_size=16, detail_vocab_size=32, hidden_size=48, num_hidden_layers=1, num_attention_heads=4,
                        head_layers=1, num_classes=3, block_size=16, initializer_range=0.2)
    transformer = IAR2ForImageGeneration(config).eval()
    with torch.no_grad():
        transformer.head.semantic_out[-1].weight.normal_(0, 0.5)
        transformer.head.detail_out[-1].weight.normal_(0, 0.5)
    return IAR2Pipeline(transformer=transformer, vqvae=tiny_dual_vq(), id2label={0: "shirt", 1: "shoe", 2: "bag"})


def test_images_are_the_tokenizer_decoding_of_the_generated_ids(pipe):
    images = pipe(["shoe", 2], output_type="pt", generator=[torch.Generator().manual_seed(s) for s in (1, 2)]).images
    assert images.shape == (2, 3, 8, 8) and pipe.image_size == 8
    semantic, detail = pipe.transformer.generate([1, 2], generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    expected = ((pipe.vqvae.decode_ids(semantic, detail) / 2 + 0.5).clamp(0, 1))
    torch.testing.assert_close(images, expected, atol=1e-6, rtol=0)


def test_seeded_outputs_are_reproducible_and_names_resolve(pipe):
    first = pipe("bag", num_images_per_label=2, output_type="np", generator=torch.Generator().manual_seed(3)).images
    second = pipe([2], num_images_per_label=2, output_type="np", generator=torch.Generator().manual_seed(3)).images
    assert first.shape == (2, 8, 8, 3) and np.array_equal(first, second)
    assert pipe.get_label_ids("shoe") == [1]


def test_output_size_resizes_like_the_evaluation(pipe):
    images = pipe([0], output_type="pt", output_size=16, generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 3, 16, 16)
    pil = pipe([0], output_size=16, generator=torch.Generator().manual_seed(0)).images[0]
    assert pil.size == (16, 16)


def test_callback_sees_both_id_grids(pipe):
    seen = []
    pipe([1], generator=torch.Generator().manual_seed(0),
         callback_on_step_end=lambda p, step, t, kwargs: seen.append((step, kwargs["semantic_ids"][0, step].item(), kwargs["detail_ids"][0, step].item())))
    assert [s for s, _, _ in seen] == list(range(16))


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "p")
    assert (tmp_path / "p" / "README.md").read_text().startswith("---")
    loaded = IAR2Pipeline.from_pretrained(tmp_path / "p")
    assert isinstance(loaded.vqvae, DualCodebookVQModel) and isinstance(loaded.transformer, IAR2ForImageGeneration)
    a = pipe([0, 1], output_type="np", generator=torch.Generator().manual_seed(5)).images
    b = loaded([0, 1], output_type="np", generator=torch.Generator().manual_seed(5)).images
    assert np.array_equal(a, b) and loaded.id2label[1] == "shoe"


def test_components_that_do_not_belong_together_are_refused(pipe, tiny_dual_vq):
    with pytest.raises(MASCError, match="16 semantic x 64 detail codes but the IAR2 model predicts 16 x 32"):
        IAR2Pipeline(transformer=pipe.transformer, vqvae=tiny_dual_vq(detail=64))
    from diffusers import VQModel

    with pytest.raises(MASCError, match="vqvae must be a DualCodebookVQModel, got VQModel"):
        IAR2Pipeline(transformer=pipe.transformer, vqvae=VQModel(block_out_channels=(32,), norm_num_groups=32))
    transformer = pipe.transformer
    transformer.config.tokenizer_fingerprint = "0" * 64
    try:
        with pytest.raises(MASCError, match="tokenizer fingerprints differ"):
            IAR2Pipeline(transformer=transformer, vqvae=pipe.vqvae)
    finally:
        transformer.config.tokenizer_fingerprint = None


@pytest.mark.parametrize(
    "kwargs, match",
    [({"output_size": 0}, "output_size must be a positive int"), ({"output_type": "jpeg"}, "output_type 'jpeg' does not exist"),
     ({"semantic_guidance": (2.0, -1.0)}, "finite and >= 0")],
)
def test_bad_call_arguments(pipe, kwargs, match):
    with pytest.raises(MASCError, match=match):
        pipe([0], **kwargs)


# ------------------------------------------------------------------ the evaluation protocol


def test_sample_images_records_and_resumes_iar2_settings(pipe, tmp_path):
    import json

    from masc_hf.evaluation import image_seed, sample_images
    from masc_hf.evaluation.sampling import SampleError

    options = dict(num_per_class=2, class_labels=[0, 2], seed=3, batch_size=3, progress=False,
                   semantic_guidance=(1.0, 3.0), detail_guidance=2.0, attention_guidance_weight=0.5)
    report = sample_images(pipe, tmp_path / "s", **options)
    settings = json.loads((tmp_path / "s" / "sampling.json").read_text())
    assert report["num_images"] == 4 and settings["guidance_scale"] is None
    assert settings["semantic_guidance"] == [1.0, 3.0] and settings["detail_guidance"] == [2.0, 2.0]
    assert settings["attention_guidance_weight"] == 0.5
    image = np.asarray(PIL_open(tmp_path / "s" / "000003.png"))
    expected = pipe([2], output_type="np", generator=[torch.Generator().manual_seed(image_seed(3, 3))],
                    semantic_guidance=(1.0, 3.0), detail_guidance=2.0, attention_guidance_weight=0.5).images[0]
    assert np.array_equal(image, (expected * 255).round().astype(np.uint8))
    (tmp_path / "s" / "000001.png").unlink()
    assert sample_images(pipe, tmp_path / "s", **options)["generated"] == 1  # only the missing image is written
    with pytest.raises(SampleError, match="semantic_guidance"):
        sample_images(pipe, tmp_path / "s", **{**options, "semantic_guidance": (1.0, 4.0)})
    with pytest.raises(SampleError, match="IAR2Pipeline has no guidance_scale"):
        sample_images(pipe, tmp_path / "t", num_per_class=1, guidance_scale=2.0, progress=False)
    with pytest.raises(SampleError, match=r"compile=True \(--compile\) applies to a MASCPipeline; an IAR2Pipeline.s model has no compiled decode step"):
        sample_images(pipe, tmp_path / "u", num_per_class=1, compile=True, progress=False)
    assert not (tmp_path / "u").exists()  # refused before anything is written


@pytest.mark.slow  # a fresh interpreter imports torch, diffusers and accelerate
def test_sample_recipe_loads_an_iar2_pipeline(pipe, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    pipe.save_pretrained(tmp_path / "pipe")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(repo / "src")}
    command = [sys.executable, str(repo / "recipes" / "sample.py"), "--pipeline", str(tmp_path / "pipe"), "--out", str(tmp_path / "out"),
               "--num-per-class", "1", "--classes", "0-2", "--semantic-guidance", "1,3", "--detail-guidance", "2", "--cpu"]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.load(tmp_path / "out.npz")["arr_0"].shape == (3, 8, 8, 3)
    bad = subprocess.run(command[:-5] + ["--cfg-scale", "4", "--cpu", "--out", str(tmp_path / "bad")], env=env, capture_output=True, text=True, timeout=180)
    assert bad.returncode == 2 and "IAR2Pipeline has no guidance_scale" in bad.stderr and "Traceback" not in bad.stderr
    compiled = subprocess.run(command + ["--compile", "--out", str(tmp_path / "compiled")], env=env, capture_output=True, text=True, timeout=180)
    assert compiled.returncode == 2 and "Traceback" not in compiled.stderr
    assert "compile=True (--compile) applies to a MASCPipeline" in compiled.stderr.strip().splitlines()[-1]


def PIL_open(path):
    import PIL.Image

    return PIL.Image.open(path)
