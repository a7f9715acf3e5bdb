"""MASCPipeline on the converted LlamaGen fixtures (tiny GPT: 10 classes, 8x8 tokens; tiny VQ: 256 x 8)."""

import json

import numpy as np
import PIL.Image
import pytest
import torch

from masc_hf import MASCClusterMap, build_cluster_map
from masc_hf.errors import ClusterMapMismatchError, MASCError
from masc_hf.models import LlamaGenConfig, LlamaGenForImageGeneration
from masc_hf.models.convert_llamagen import convert_llamagen_checkpoint, load_config_file
from masc_hf.pipelines import ClassLabelError, MASCPipeline, imagenet_id2label
from masc_hf.vq.codebook import load_codebook_from_vqmodel
from masc_hf.vq.convert_llamagen import convert_llamagen_vq

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@pytest.fixture(scope="module")
def flat_pipe(parts):
    pipe = MASCPipeline(transformer=parts["flat"], vqvae=parts["vqvae"], id2label=dict(enumerate(FASHION)))
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def masc_pipe(parts):
    pipe = MASCPipeline(transformer=parts["masc"], vqvae=parts["vqvae"], cluster_map=parts["cluster_map"])
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_flat_pipeline_images_for_int_and_name_labels(flat_pipe):
    out = flat_pipe([3, "trouser", "Ankle boot"], num_images_per_label=2, generator=torch.Generator().manual_seed(0))
    assert len(out.images) == 6 and all(isinstance(im, PIL.Image.Image) for im in out.images)
    assert out.images[0].size == (128, 128) and flat_pipe.image_size == 128
    arr = flat_pipe(1, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert arr.shape == (1, 128, 128, 3) and arr.dtype == np.float32 and 0 <= arr.min() and arr.max() <= 1
    pt = flat_pipe([1], output_type="pt", generator=torch.Generator().manual_seed(0), return_dict=False)[0]
    assert pt.shape == (1, 3, 128, 128)
    np.testing.assert_allclose(pt.permute(0, 2, 3, 1).numpy(), arr, atol=1e-6)


def test_images_are_the_decoded_generated_tokens(flat_pipe, parts):
    from masc_hf.vq.tokens import decode_ids

    tokens = parts["flat"].generate([4], guidance_scale=1.0, top_k=1)
    expected = ((decode_ids(parts["vqvae"], tokens, 8) + 1) / 2).clamp(0, 1)
    got = flat_pipe([4], guidance_scale=1.0, top_k=1, output_type="pt").images
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_masc_pipeline_decodes_clusters_to_member_tokens(masc_pipe, parts):
    out = masc_pipe([0, 9], generator=torch.Generator().manual_seed(1), output_type="np")
    assert out.images.shape == (2, 128, 128, 3)
    generator = torch.Generator().manual_seed(1)
    coarse = parts["masc"].generate([0, 9], generator=generator)  # the model's ids are cluster ids
    fine = parts["cluster_map"].decode(coarse, generator=generator)  # what the pipeline does next
    assert torch.equal(parts["cluster_map"].encode(fine), coarse)


def test_same_seed_same_images_after_save_and_load(masc_pipe, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = masc_pipe([2, 5], output_type="pt", generator=torch.Generator().manual_seed(7)).images
    masc_pipe.save_pretrained(tmp_path / "pipe")
    index = json.loads((tmp_path / "pipe" / "model_index.json").read_text())
    assert index["cluster_map"] == ["masc_hf.clustering.cluster_map", "MASCClusterMap"]
    assert index["transformer"][1] == "LlamaGenForImageGeneration" and index["vqvae"] == ["diffusers", "VQModel"]
    card = (tmp_path / "pipe" / "README.md").read_text()
    assert "MASCPipeline: MASC LlamaGen" in card and "guidance scale" in card and "bibtex" in card
    loaded = MASCPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.cluster_map, MASCClusterMap) and loaded.cluster_map == masc_pipe.cluster_map
    after = loaded([2, 5], output_type="pt", generator=torch.Generator().manual_seed(7)).images
    torch.testing.assert_close(after, before, atol=0, rtol=0)


def test_flat_round_trip_keeps_class_names(flat_pipe, tmp_path):
    flat_pipe.save_pretrained(tmp_path / "flat")
    loaded = MASCPipeline.from_pretrained(tmp_path / "flat")
    assert loaded.cluster_map is None and loaded.id2label[9] == "Ankle boot"
    assert loaded.get_label_ids(["bag", "Sneaker"]) == [8, 7]


def test_an_interrupted_save_leaves_the_target_as_it_was(flat_pipe, tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(flat_pipe.vqvae, "save_pretrained", boom)  # after the transformer was written
    with pytest.raises(RuntimeError, match="disk full"):
        flat_pipe.save_pretrained(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # no half-written directory, no staging left
    monkeypatch.undo()
    saved = tmp_path / "pipe"
    flat_pipe.save_pretrained(saved)
    before = {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()}
    monkeypatch.setattr(flat_pipe.vqvae, "save_pretrained", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        flat_pipe.save_pretrained(saved)
    assert {p.relative_to(saved): p.read_bytes() for p in saved.rglob("*") if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["pipe"]


def test_save_refuses_a_directory_with_foreign_files(flat_pipe, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(MASCError, match="not part of a pipeline.*notes.txt"):
        flat_pipe.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_imagenet_names():
    id2label = imagenet_id2label()
    assert len(id2label) == 1000 and id2label[0] == "tench, Tinca tinca" and id2label[207] == "golden retriever"
    from masc_hf.pipelines.labels import resolve_class_labels

    assert resolve_class_labels("golden retriever", id2label, 1000) == [207]
    assert resolve_class_labels(["tabby", "tiger cat"], id2label, 1000) == [281, 282]
    assert resolve_class_labels("tabby, tabby cat", id2label, 1000) == [281]
    assert resolve_class_labels(["Tabby Cat", 7, "7"], id2label, 1000) == [281, 7, 7]
    with pytest.raises(ClassLabelError, match="did you mean 'golden retriever'"):
        resolve_class_labels("golden retriver", id2label, 1000)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"class_labels": 10}, "class id 10 is out of range \\[0, 10\\)"),
        ({"class_labels": "sandals"}, "did you mean 'sandal'"),
        ({"class_labels": 1, "output_type": "latent"}, "output_type 'latent' does not exist"),
        ({"class_labels": 1, "num_images_per_label": 0}, "positive int"),
        ({"class_labels": [1.5]}, "ints or names"),
    ],
)
def test_bad_calls_fail_before_generating(flat_pipe, kwargs, match, monkeypatch):
    monkeypatch.setattr(flat_pipe.transformer, "generate", lambda *a, **k: pytest.fail("generation started"))
    with pytest.raises(MASCError, match=match):
        flat_pipe(**kwargs)


def test_components_that_do_not_belong_together(parts):
    vqvae, flat, masc, cmap = parts["vqvae"], parts["flat"], parts["masc"], parts["cluster_map"]
    with pytest.raises(ClusterMapMismatchError, match="no cluster_map was given"):
        MASCPipeline(transformer=masc, vqvae=vqvae)
    with pytest.raises(ClusterMapMismatchError, match="transformer is flat"):
        MASCPipeline(transformer=flat, vqvae=vqvae, cluster_map=cmap)
    other_map = build_cluster_map(load_codebook_from_vqmodel(vqvae), 64, method="kmeans", compute_quality=False)
    with pytest.raises(ClusterMapMismatchError, match="trained on cluster map"):
        MASCPipeline(transformer=masc, vqvae=vqvae, cluster_map=other_map)
    # a map of another tokenizer's codebook (same N and k), and a model config that claims it
    foreign = build_cluster_map(np.random.default_rng(0).standard_normal((256, 8)), 64, compute_quality=False)
    config = LlamaGenConfig(**{**masc.config.to_dict(), "cluster_map_fingerprint": foreign.fingerprint})
    with pytest.raises(ClusterMapMismatchError, match="built from codebook .* but the vqvae uses codebook"):
        MASCPipeline(transformer=LlamaGenForImageGeneration(config), vqvae=vqvae, cluster_map=foreign)
    wide = LlamaGenForImageGeneration(LlamaGenConfig(**{**flat.config.to_dict(), "vocab_size": 512}))
    with pytest.raises(MASCError, match="codebook has 256 entries but the transformer's fine vocabulary is 512"):
        MASCPipeline(transformer=wide, vqvae=vqvae)


def test_sample_cli_writes_a_grid(masc_pipe, tmp_path, capsys):
    from masc_hf.cli import main

    masc_pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "grid.png"
    assert main(["sample", "--pipeline", str(tmp_path / "pipe"), "--labels", "7,2", "--n", "3", "--out", str(out), "--device", "cpu"]) == 0
    grid = PIL.Image.open(out)
    assert grid.size[1] == 2 * 128 and grid.size[0] > 3 * 128  # two rows, three columns plus the label column
    assert main(["sample", "--pipeline", str(tmp_path / "pipe"), "--labels", "11", "--out", str(tmp_path / "x.png"), "--device", "cpu"]) == 2
    assert "out of range" in capsys.readouterr().err and not (tmp_path / "x.png").exists()


def test_push_to_hub_uploads_the_saved_pipeline_with_its_card(flat_pipe, monkeypatch):
    from pathlib import Path

    import huggingface_hub

    seen = {}

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type("RepoUrl", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            folder = Path(folder_path)
            seen["files"] = sorted(p.name for p in folder.iterdir())
            seen["card"] = (folder / "README.md").read_text()
            seen["loaded"] = MASCPipeline.from_pretrained(folder)
            return "commit"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    assert flat_pipe.push_to_hub("org/pipe") == "commit"
    assert {"model_index.json", "transformer", "vqvae", "README.md"} <= set(seen["files"])
    assert "flat LlamaGen" in seen["card"] and seen["loaded"].cluster_map is None


def test_model_cpu_offload_runs_the_transformer_through_its_hook(parts, monkeypatch):
    """With enable_model_cpu_offload the transformer must be on the execution device while it generates:
    accelerate's offload hook moves it there when forward is called, so every step must go through forward."""
    from accelerate.hooks import CpuOffload

    pipe = MASCPipeline(transformer=parts["masc"], vqvae=parts["vqvae"], cluster_map=parts["cluster_map"])
    pipe.set_progress_bar_config(disable=True)
    expected = pipe([1, 4], output_type="np", generator=torch.Generator().manual_seed(3)).images
    seen = []
    original = CpuOffload.pre_forward

    def recording_pre_forward(self, module, *args, **kwargs):
        result = original(self, module, *args, **kwargs)
        seen.append((type(module).__name__, next(module.parameters()).device.type))
        return result

    monkeypatch.setattr(CpuOffload, "pre_forward", recording_pre_forward)
    pipe.enable_model_cpu_offload(device="cpu")
    try:
        images = pipe([1, 4], output_type="np", generator=torch.Generator().manual_seed(3)).images
    finally:
        pipe.remove_all_hooks()
    calls = [device for name, device in seen if name == "LlamaGenForImageGeneration"]
    assert len(calls) == parts["masc"].config.block_size  # the class-position prefill, then one call per token
    assert set(calls) == {pipe._offload_device.type}
    assert ("VQModel", "cpu") in seen  # the decoder too is moved in by its hook
    np.testing.assert_array_equal(images, expected)


def test_callback_on_step_end_sees_every_token(flat_pipe):
    steps = []

    def callback(pipe, step, timestep, callback_kwargs):
        steps.append((step, int((callback_kwargs["tokens"][:, : step + 1] >= 0).all())))
        return callback_kwargs

    flat_pipe([1], generator=torch.Generator().manual_seed(0), callback_on_step_end=callback, output_type="np")
    assert steps == [(i, 1) for i in range(64)]
    with pytest.raises(MASCError, match="latents"):
        flat_pipe([1], callback_on_step_end=callback, callback_on_step_end_tensor_inputs=["latents"])


# ---------------------------------------------------------------------------------------------- hierarchical decoding


@pytest.fixture(scope="module")
def refiner(parts):
    from masc_hf.models.refiner import MASCRefiner, MASCRefinerConfig

    torch.manual_seed(0)
    config = MASCRefinerConfig.for_backbone(parts["masc"], hidden_size=32, num_attention_heads=2)
    refiner = MASCRefiner(config, cluster_map=parts["cluster_map"])
    torch.nn.init.normal_(refiner.lm_head.weight, std=0.5)
    return refiner.eval()


def test_hierarchical_decoding_through_the_pipeline(parts, refiner, tmp_path):
    pipe = MASCPipeline(transformer=parts["masc"], vqvae=parts["vqvae"], cluster_map=parts["cluster_map"], refiner=refiner)
    pipe.set_progress_bar_config(disable=True)
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    hierarchical = pipe([0, 9], generator=gens(), decoding="hierarchical", output_type="pt").images
    random_member = pipe([0, 9], generator=gens(), output_type="pt").images  # the default, as the paper
    assert hierarchical.shape == random_member.shape == (2, 3, 128, 128)
    assert not torch.equal(hierarchical, random_member)  # the refiner picks other members than the random draw
    fine = parts["masc"].generate([0, 9], generator=gens(), refiner=refiner)
    from masc_hf.vq.tokens import decode_ids

    torch.testing.assert_close(hierarchical, ((decode_ids(parts["vqvae"], fine, 8) + 1) / 2).clamp(0, 1), atol=1e-6, rtol=0)
    pipe.save_pretrained(tmp_path / "pipe")
    loaded = MASCPipeline.from_pretrained(tmp_path / "pipe")
    loaded.set_progress_bar_config(disable=True)
    assert loaded.refiner is not None
    torch.testing.assert_close(loaded([0, 9], generator=gens(), decoding="hierarchical", output_type="pt").images, hierarchical, atol=0, rtol=0)


def test_hierarchical_decoding_bad_input(parts, refiner, masc_pipe):
    with pytest.raises(MASCError, match="needs a refiner"):
        masc_pipe([1], decoding="hierarchical")
    with pytest.raises(MASCError, match="decoding 'greedy' does not exist"):
        masc_pipe([1], decoding="greedy")
    with pytest.raises(ClusterMapMismatchError, match="flat"):
        MASCPipeline(transformer=parts["flat"], vqvae=parts["vqvae"], refiner=refiner)
    other_map = build_cluster_map(load_codebook_from_vqmodel(parts["vqvae"]), 64, method="kmeans", compute_quality=False)
    from masc_hf.models import LlamaGenConfig

    masc_on_other = LlamaGenForImageGeneration(LlamaGenConfig(**{**parts["masc"].config.to_dict(), "cluster_map_fingerprint": other_map.fingerprint}))
    with pytest.raises(ClusterMapMismatchError, match="refiner was trained"):
        MASCPipeline(transformer=masc_on_other, vqvae=parts["vqvae"], cluster_map=other_map, refiner=refiner)
