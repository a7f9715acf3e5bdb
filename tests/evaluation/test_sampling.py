"""The sampling protocol (per-image seeds, resumable folders, ADM .npz) on the LlamaGen fixtures
(tiny GPT: 10 classes, 8x8 tokens; tiny VQ: 256 x 8, 128 px images)."""

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch

from masc_hf import MASCPipeline, build_cluster_map
from masc_hf.errors import MASCError, ModelInputError
from masc_hf.evaluation import (
    SampleError,
    check_npz_images,
    check_sample_folder,
    image_seed,
    load_npz_images,
    pack_npz,
    sample_images,
)
from masc_hf.models import LlamaGenForImageGeneration
from masc_hf.models.convert_llamagen import convert_llamagen_checkpoint, load_config_file
from masc_hf.models.ar import inverse_cdf_sample
from masc_hf.vq.codebook import load_codebook_from_vqmodel
from masc_hf.vq.convert_llamagen import convert_llamagen_vq

REPO = Path(__file__).resolve().parents[2]
RUN = dict(num_per_class=2, class_labels=[0, 3, 9], seed=5, guidance_scale=4.0)  # 6 images


@pytest.fixture(scope="module")
def pipe(llamagen_fixtures, tmp_path_factory):
    from diffusers import VQModel

    root = tmp_path_factory.mktemp("sampling_parts")
    vq_dir = convert_llamagen_vq(llamagen_fixtures / "vq" / "model.safetensors", root / "vq", config=llamagen_fixtures / "vq" / "config.json")
    vqvae = VQModel.from_pretrained(vq_dir).eval()
    cluster_map = build_cluster_map(load_codebook_from_vqmodel(vqvae), 64, compute_quality=False)
    config = load_config_file(llamagen_fixtures / "gpt" / "config.json")
    masc_dir = convert_llamagen_checkpoint(llamagen_fixtures / "gpt" / "model.safetensors", root / "masc", config, cluster_map=cluster_map)
    transformer = LlamaGenForImageGeneration.from_pretrained(masc_dir).eval()
    # the MASC start has a zero head (uniform predictions): give it one, so that draws depend on the logits
    torch.nn.init.normal_(transformer.lm_head.weight, std=0.5, generator=torch.Generator().manual_seed(0))
    pipe = MASCPipeline(transformer=transformer, vqvae=vqvae, cluster_map=cluster_map)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def reference_run(pipe, tmp_path_factory):
    """One uninterrupted single-process run of RUN (batch 4): {file name: bytes}."""
    out = tmp_path_factory.mktemp("reference") / "samples"
    report = sample_images(pipe, out, batch_size=4, progress=False, **RUN)
    assert report["num_images"] == 6 and report["generated"] == 6 and report["skipped"] == 0
    return out, folder_bytes(out)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix == ".png"}


def generators(seeds) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(image_seed(5, s)) for s in seeds]


# ---------------------------------------------------------------------------------------------
# per-image generators
# ---------------------------------------------------------------------------------------------


def test_image_seed_is_a_fixed_hash_in_63_bits():
    seeds = [image_seed(base, index) for base in range(3) for index in range(100)]
    assert len(set(seeds)) == 300 and all(0 <= s < 2**63 for s in seeds)
    assert image_seed(0, 0) == image_seed(0, 0) == 7896617691693857887  # SeedSequence's output is fixed
    torch.Generator().manual_seed(max(seeds))
    for bad in (-1, 1.5, True):
        with pytest.raises(SampleError, match="non-negative int"):
            image_seed(bad, 0)


@pytest.mark.parametrize("guidance_scale,top_k,top_p", [(4.0, 0, 1.0), (1.0, 20, 0.9)])
def test_an_image_does_not_depend_on_its_batch(pipe, guidance_scale, top_k, top_p):
    """Image b draws only from generator b: in a batch of 4 it gets the tokens it gets alone.

    Not bit for bit in the logits: on CPU the cached decode step's matmuls round differently for
    1, 2 or 8 rows (about 5e-6 here), so a token could flip where a uniform falls that close to a
    CDF boundary; none does for these seeds. The VQ decoder's first convolution takes another
    kernel for a batch of 1 than for 2 or more, so pixels may differ by one level.
    """
    model, cmap = pipe.transformer, pipe.cluster_map
    labels = [0, 3, 3, 9]
    kwargs = dict(guidance_scale=guidance_scale, top_k=top_k, top_p=top_p)

    def generate(labels, generator, **kwargs):  # the pipeline's first two steps: model ids, then the map
        coarse = model.generate(labels, generator=generator, **kwargs)
        return cmap.decode(coarse, generator=generator), coarse

    fine, coarse = generate(labels, generator=generators(range(4)), **kwargs)
    for b, label in enumerate(labels):
        fine_b, coarse_b = generate([label], generator=generators([b]), **kwargs)
        assert torch.equal(coarse_b[0], coarse[b]) and torch.equal(fine_b[0], fine[b])
    assert torch.equal(cmap.encode(fine), coarse)
    again = generate(labels[::-1], generator=generators(range(4))[::-1], **kwargs)[0]
    assert torch.equal(again.flip(0), fine)  # order in the batch does not matter either
    assert len({tuple(row.tolist()) for row in fine}) == 4  # and the seeds differ
    sampling = dict(guidance_scale=guidance_scale, top_k=top_k, top_p=top_p, output_type="np")
    batch = pipe(labels, generator=generators(range(4)), **sampling).images
    alone = pipe(labels[3], generator=generators([3]), **sampling).images
    assert np.abs(np.rint(batch[3] * 255) - np.rint(alone[0] * 255)).max() <= 1


def test_inverse_cdf_sampling_follows_the_distribution():
    probs = torch.tensor([[0.0, 0.5, 0.0, 0.3, 0.2, 0.0]]).repeat(20_000, 1)
    uniforms = torch.rand(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ids = inverse_cdf_sample(probs, uniforms)
    counts = torch.bincount(ids, minlength=6).double() / 20_000
    assert counts[[0, 2, 5]].sum() == 0
    torch.testing.assert_close(counts, probs[0].double(), atol=0.015, rtol=0)
    edges = inverse_cdf_sample(probs[:3], torch.tensor([0.0, 0.5, 1 - 2**-53], dtype=torch.float64))
    assert edges.tolist() == [1, 3, 4]  # 0 and the largest uniform land on ids of positive probability


@pytest.mark.parametrize("vocab", [16384, 1000])
def test_compiled_inverse_cdf_equals_eager(vocab):
    # under torch.compile the CDF is summed in blocks (inductor's CUDA code for one long float64 scan
    # fails): the same ids as eager, zero-probability ids still never drawn, edges included
    generator = torch.Generator().manual_seed(vocab)
    probs = torch.rand(64, vocab, generator=generator) ** 8
    probs[:, ::7] = 0.0
    probs = probs.softmax(-1) * (probs > 0)
    uniforms = torch.rand(64, generator=generator, dtype=torch.float64)
    uniforms[:3] = torch.tensor([0.0, 0.5, 1 - 2**-53], dtype=torch.float64)
    compiled = torch.compile(inverse_cdf_sample, fullgraph=True, dynamic=False)(probs, uniforms)
    eager = inverse_cdf_sample(probs, uniforms)
    assert torch.equal(compiled, eager)
    assert bool((probs.gather(1, compiled[:, None]) > 0).all())


def test_bad_generator_lists_fail_before_generating(pipe, monkeypatch):
    model = pipe.transformer
    with pytest.raises(ModelInputError, match="list of 2 generators but there are 3 class labels"):
        model.generate([1, 2, 3], generator=generators(range(2)))
    with pytest.raises(ModelInputError, match="must hold torch.Generator objects, got int"):
        model.generate([1, 2], generator=[0, 1])
    monkeypatch.setattr(model, "generate", lambda *a, **k: pytest.fail("generation started"))
    with pytest.raises(MASCError, match=r"list of 3 generators but 2 label\(s\) x 2 image\(s\) = 4 images"):
        pipe([1, 2], num_images_per_label=2, generator=generators(range(3)))


def test_cluster_map_decode_with_a_generator_per_row(pipe):
    cmap = pipe.cluster_map
    coarse = torch.randint(0, 64, (3, 40), generator=torch.Generator().manual_seed(0))
    rows = cmap.decode(coarse, generator=[torch.Generator().manual_seed(s) for s in (7, 8, 9)])
    alone = cmap.decode(coarse[1:2], generator=[torch.Generator().manual_seed(8)])
    assert torch.equal(rows[1:2], alone) and torch.equal(cmap.encode(rows), coarse)
    assert torch.equal(cmap.decode(coarse, generator=[7, 8, 9]), rows)  # int seeds: CPU generators
    numpy_rows = cmap.decode(coarse.numpy(), generator=[np.random.default_rng(s) for s in (1, 2, 3)])
    assert np.array_equal(numpy_rows[2:], cmap.decode(coarse[2:].numpy(), generator=[3]))
    with pytest.raises(MASCError, match=r"list of 2 generators needs ids of shape \[2, ...\]"):
        cmap.decode(coarse, generator=[1, 2])
    with pytest.raises(MASCError, match="must be numpy.random.Generators or int seeds, got Generator"):
        cmap.decode(coarse.numpy(), generator=[torch.Generator()] * 3)


# ---------------------------------------------------------------------------------------------
# sample folders
# ---------------------------------------------------------------------------------------------


def test_sample_folder_layout_and_settings(pipe, reference_run):
    out, images = reference_run
    assert sorted(images) == [f"{i:06d}.png" for i in range(6)]
    settings = json.loads((out / "sampling.json").read_text())
    assert settings["class_labels"] == [0, 3, 9] and settings["num_per_class"] == 2 and settings["num_images"] == 6
    assert settings["seed"] == 5 and settings["guidance_scale"] == 4.0 and settings["image_size"] == 128
    assert settings["cluster_map_fingerprint"] == pipe.cluster_map.fingerprint and settings["transformer_dtype"] == "float32"
    # image 3 is the second image of class 3, drawn with its own seed in the first batch of 4
    expected = pipe([0, 0, 3, 3], guidance_scale=4.0, generator=generators(range(4))).images[3]
    assert np.array_equal(np.asarray(PIL.Image.open(out / "000003.png")), np.asarray(expected))
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_an_interrupted_run_resumes_to_the_same_bytes(pipe, reference_run, tmp_path, monkeypatch):
    _, expected = reference_run
    out = tmp_path / "samples"
    calls = []
    original = type(pipe).__call__

    def stop_after_one_batch(self, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(type(pipe), "__call__", stop_after_one_batch)
        with pytest.raises(KeyboardInterrupt):
            sample_images(pipe, out, batch_size=4, progress=False, **RUN)
    assert sorted(folder_bytes(out)) == [f"{i:06d}.png" for i in range(4)]
    report = sample_images(pipe, out, batch_size=4, progress=False, **RUN)
    assert (report["generated"], report["skipped"]) == (2, 4)
    (out / "000001.png").unlink()  # its batch (0-3) is drawn again; only the missing file is written
    before = (out / "000002.png").stat().st_mtime_ns
    assert sample_images(pipe, out, batch_size=4, progress=False, **RUN)["generated"] == 1
    assert (out / "000002.png").stat().st_mtime_ns == before
    assert folder_bytes(out) == expected
    assert sample_images(pipe, out, batch_size=4, progress=False, **RUN)["generated"] == 0


def test_a_resume_with_another_batch_size_keeps_each_image_up_to_rounding(pipe, reference_run, tmp_path, caplog):
    reference, expected = reference_run
    out = tmp_path / "samples"
    shutil.copytree(reference, out)
    (out / "000004.png").unlink()
    (out / "000005.png").unlink()
    assert sample_images(pipe, out, batch_size=1, progress=False, **RUN)["generated"] == 2
    assert "batch_size 4 -> 1" in caplog.text
    for name in ("000004.png", "000005.png"):
        got, want = (np.asarray(PIL.Image.open(io.BytesIO(data)), dtype=int) for data in (folder_bytes(out)[name], expected[name]))
        assert np.abs(got - want).max() <= 1  # the same tokens; the decoder's batch-of-1 kernel rounds differently


def test_compiled_sampling_draws_the_eager_images_and_resumes_an_eager_run(pipe, reference_run, tmp_path, caplog):
    """compile=True: the MASC pipeline's compiled decode step (torch.compile, packed weights on CPU);
    each image has its own generator, so the images are the eager run's."""
    reference, expected = reference_run
    out = tmp_path / "compiled"
    report = sample_images(pipe, out, batch_size=4, progress=False, compile=True, **RUN)
    assert report["generated"] == 6 and json.loads((out / "sampling.json").read_text())["compile"] is True
    assert folder_bytes(out) == expected
    resumed = tmp_path / "resumed"  # an eager run finished by a compiled one: allowed, and said
    shutil.copytree(reference, resumed)
    (resumed / "000002.png").unlink()
    older = json.loads((resumed / "sampling.json").read_text())
    del older["compile"]  # written before the option existed: an eager run
    (resumed / "sampling.json").write_text(json.dumps(older))
    assert sample_images(pipe, resumed, batch_size=4, progress=False, compile=True, **RUN)["generated"] == 1
    assert "compile False -> True" in caplog.text
    assert folder_bytes(resumed) == expected


def test_two_processes_write_what_one_process_writes(pipe, tmp_path):
    """Batches of the same shape (3 images) in one process or spread over two: the same bytes."""
    sample_images(pipe, tmp_path / "one", batch_size=3, progress=False, **RUN)
    reports = [
        sample_images(pipe, tmp_path / "two", batch_size=3, process_index=p, num_processes=2, progress=False, **RUN) for p in (1, 0)
    ]
    assert [r["generated"] for r in reports] == [3, 3]
    assert folder_bytes(tmp_path / "two") == folder_bytes(tmp_path / "one")


def test_resume_refuses_other_settings_or_foreign_folders(pipe, reference_run, tmp_path, monkeypatch):
    out, _ = reference_run
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: pytest.fail("generation started"))
    with pytest.raises(SampleError, match=r"other settings \(seed: 5 there vs 6 now; guidance_scale: 4.0 there vs 2.0 now\)"):
        sample_images(pipe, out, **{**RUN, "seed": 6, "guidance_scale": 2.0})
    with pytest.raises(SampleError, match="class_labels: \\[0, 3, 9\\] there vs \\[0, 3\\] now.*resume with the same settings"):
        sample_images(pipe, out, **{**RUN, "class_labels": [0, 3]})  # images beyond 4 would be orphans
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    PIL.Image.new("RGB", (128, 128)).save(foreign / "000000.png")
    with pytest.raises(SampleError, match="holds 1 .png file.* but no sampling.json"):
        sample_images(pipe, foreign, **RUN)
    shutil.copytree(out, tmp_path / "odd")
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "odd" / "000004.png")
    with pytest.raises(SampleError, match="000004.png is 64x64 pixels but 128x128 is expected"):
        sample_images(pipe, tmp_path / "odd", **RUN)
    for kwargs, match in [
        ({"process_index": 2, "num_processes": 2}, r"process_index 2 is outside \[0, 2\)"),
        ({"batch_size": 0}, "batch_size must be a positive int"),
        ({"class_labels": [10]}, "out of range"),
        ({"seed": -1}, "non-negative int"),
    ]:
        with pytest.raises(MASCError, match=match):
            sample_images(pipe, tmp_path / "new", **{**RUN, **kwargs})


def test_bad_sampling_settings_leave_no_settings_file(pipe, tmp_path):
    with pytest.raises(ModelInputError, match="top_p"):
        sample_images(pipe, tmp_path / "s", progress=False, **{**RUN, "top_p": 0})
    assert not (tmp_path / "s" / "sampling.json").exists()  # so the corrected rerun is not refused
    assert sample_images(pipe, tmp_path / "s", progress=False, **{**RUN, "class_labels": [1], "num_per_class": 1})["generated"] == 1


# ---------------------------------------------------------------------------------------------
# .npz
# ---------------------------------------------------------------------------------------------


def test_pack_npz_writes_the_adm_format(reference_run, tmp_path):
    out, _ = reference_run
    npz = pack_npz(out, tmp_path / "samples.npz")
    stacked = np.stack([np.asarray(PIL.Image.open(out / f"{i:06d}.png").convert("RGB")) for i in range(6)])
    with np.load(npz) as data:
        assert list(data.keys()) == ["arr_0"]
        assert data["arr_0"].dtype == np.uint8 and data["arr_0"].shape == (6, 128, 128, 3)
        assert np.array_equal(data["arr_0"], stacked)
    np.savez(tmp_path / "reference.npz", arr_0=stacked)
    with zipfile.ZipFile(npz) as ours, zipfile.ZipFile(tmp_path / "reference.npz") as theirs:
        assert ours.read("arr_0.npy") == theirs.read("arr_0.npy")  # the .npy np.savez writes, byte for byte
    assert check_npz_images(npz, expected_count=6, expected_size=128) == (6, 128, 128)
    assert np.array_equal(load_npz_images(npz, expected_size=(128, 128)), stacked)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_pack_npz_makes_gray_images_rgb_and_sorts_by_index(tmp_path):
    folder = tmp_path / "gray"
    folder.mkdir()
    for i in (10, 2, 0, 1, 3, 4, 5, 6, 7, 8, 9):  # unpadded names: "10" sorts after "9"
        PIL.Image.fromarray(np.full((4, 6), i, dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    images = load_npz_images(pack_npz(folder, tmp_path / "gray.npz", expected_count=11))
    assert images.shape == (11, 4, 6, 3) and images[:, 0, 0, 0].tolist() == list(range(11))
    assert (images == images[..., :1]).all()


def test_bad_sample_folders_are_named_before_packing(reference_run, tmp_path):
    out, _ = reference_run
    folder = tmp_path / "samples"
    shutil.copytree(out, folder)
    (folder / "000002.png").unlink()
    (folder / "000005.png").unlink()
    with pytest.raises(SampleError, match="holds 4 images but 6 are expected; missing indices: 2, 5; rerun the sampling"):
        pack_npz(folder, tmp_path / "x.npz")
    with pytest.raises(SampleError, match="holds 4 images but 3 are expected; missing indices: 2; indices beyond 2: 3, 4"):
        check_sample_folder(folder, expected_count=3)
    PIL.Image.new("RGB", (96, 128)).save(folder / "000002.png")
    PIL.Image.new("RGB", (128, 128)).save(folder / "000005.png")
    with pytest.raises(SampleError, match="000002.png is 96x128 pixels but 128x128 is expected \\(image_size in sampling.json\\)"):
        pack_npz(folder, tmp_path / "x.npz")
    with pytest.raises(SampleError, match="000000.png is 128x128 pixels but 64x64 is expected \\(expected_size\\)"):
        check_sample_folder(out, expected_size=64)
    with pytest.raises(SampleError, match="does not end in .npz"):
        pack_npz(out, tmp_path / "x.npy")
    assert not (tmp_path / "x.npz").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SampleError, match="holds no .png images"):
        check_sample_folder(empty)
    with pytest.raises(SampleError, match="is not a folder"):
        check_sample_folder(tmp_path / "missing")
    named = tmp_path / "named"
    named.mkdir()
    for name, size in [("a.png", (8, 8)), ("b.png", (8, 8)), ("c.png", (8, 9))]:
        PIL.Image.new("RGB", size).save(named / name)
    with pytest.raises(SampleError, match="c.png is 8x9 pixels but 8x8 is expected \\(the size of a.png\\)"):
        check_sample_folder(named)
    with pytest.raises(SampleError, match="holds 3 images but 4 are expected; pass the folder"):
        check_sample_folder(named, expected_count=4)


@pytest.mark.parametrize(
    "write,match",
    [
        (lambda p: np.savez(p, arr_0=np.zeros((2, 8, 8, 3), np.float32)), "dtype float32, but the ADM evaluator expects uint8 .*astype"),
        (lambda p: np.savez(p, arr_0=np.zeros((2, 3, 8, 8), np.uint8)), r"shape \[2, 3, 8, 8\], but \[N, H, W, 3\].*transpose\(0, 2, 3, 1\)"),
        (lambda p: np.savez(p, arr_0=np.zeros((2, 8, 8), np.uint8)), r"shape \[2, 8, 8\].*np.repeat"),
        (lambda p: np.savez(p, images=np.zeros((2, 8, 8, 3), np.uint8)), "has no arr_0 \\(it holds images\\).*np.savez\\(path, arr_0=images\\)"),
        (lambda p: np.savez(p, arr_0=np.array([None, 1], dtype=object)), "dtype object"),
        (lambda p: p.write_bytes(b"not a zip"), "not an .npz archive"),
        (lambda p: np.savez(p, arr_0=np.zeros((2, 8, 8, 3), np.uint8)), "holds 2 images but 3 are expected"),
        (lambda p: np.savez(p, arr_0=np.zeros((3, 8, 6, 3), np.uint8)), "holds 6x8 images but 8x8 is expected"),
    ],
)
def test_bad_npz_files_are_refused_from_the_header(tmp_path, write, match):
    path = tmp_path / "bad.npz"
    write(path)
    with pytest.raises(SampleError, match=match):
        load_npz_images(path, expected_count=3, expected_size=8)


# ---------------------------------------------------------------------------------------------
# recipe
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow  # a fresh interpreter imports torch, diffusers and accelerate: 15-25 s on 2 busy cores
def test_recipe_samples_and_packs(pipe, reference_run, tmp_path):
    _, expected = reference_run
    pipe.save_pretrained(tmp_path / "pipe")
    out = tmp_path / "samples"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    command = [
        sys.executable, str(REPO / "recipes" / "sample.py"), "--pipeline", str(tmp_path / "pipe"), "--out", str(out),
        "--num-per-class", "2", "--classes", "0,3,9", "--seed", "5", "--cfg-scale", "4", "--batch-size", "6", "--cpu",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    assert folder_bytes(out) == expected  # the pipeline's path differs, the images do not
    assert load_npz_images(tmp_path / "samples.npz", expected_count=6).shape == (6, 128, 128, 3)


def test_image_size_eval_resizes_bicubic_and_is_recorded(pipe, reference_run, tmp_path):
    out, _ = reference_run
    resized = tmp_path / "resized"
    sample_images(pipe, resized, num_per_class=2, class_labels=[0, 3, 9], seed=5, batch_size=4, guidance_scale=4.0,
                  image_size_eval=64, progress=False)
    settings = json.loads((resized / "sampling.json").read_text())
    assert settings["image_size"] == 64 and settings["generated_size"] == 128 and settings["resize"] == "bicubic"
    full = PIL.Image.open(out / "000004.png")
    assert np.array_equal(np.asarray(PIL.Image.open(resized / "000004.png")), np.asarray(full.resize((64, 64), PIL.Image.BICUBIC)))
    assert pack_npz(resized, tmp_path / "r.npz") and np.load(tmp_path / "r.npz")["arr_0"].shape == (6, 64, 64, 3)
    with pytest.raises(SampleError, match="image_size_eval"):
        sample_images(pipe, tmp_path / "bad", num_per_class=1, class_labels=[0], image_size_eval=0, progress=False)
