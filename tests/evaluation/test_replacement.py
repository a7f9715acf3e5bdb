"""The semantic replacement test on a tiny VQ whose right clustering is known (duplicated codebook rows)."""

import json
import math

import numpy as np
import PIL.Image
import pytest
import torch

from masc_hf import build_cluster_map
from masc_hf.errors import ClusterMapMismatchError, DataError
from masc_hf.evaluation.replacement import (
    PLAIN,
    format_replacement_table,
    images_as_array,
    replacement_test,
    structural_similarity,
)


@pytest.fixture(scope="module")
def results(paired_vq, paired_maps, small_images):
    return replacement_test(paired_vq, paired_maps, small_images, batch_size=16, progress=False)


def test_rows_and_reference_row(results, paired_maps):
    assert list(results) == [PLAIN, "pairs", "random", "singletons"]
    plain = results[PLAIN]
    assert plain["psnr"] == math.inf and plain["ssim"] == 1.0 and plain["changed_tokens"] == 0.0
    assert plain["num_clusters"] == 16 and plain["num_images"] == 40
    assert results["pairs"]["method"] == "masc" and results["random"]["method"] == "random"
    assert results["random"]["num_clusters"] == 8 and "rfid" not in results["random"]


def test_singleton_clusters_change_nothing(results):
    row = results["singletons"]
    assert row["changed_tokens"] == 0.0
    assert row["psnr"] == math.inf and row["ssim"] == 1.0
    assert row["psnr_vs_original"] == results[PLAIN]["psnr_vs_original"]


def test_near_duplicate_clusters_keep_the_image_a_random_map_does_not(results):
    pairs, random = results["pairs"], results["random"]
    # about half the tokens move to their pair's other member, yet the images barely change
    assert 0.3 < pairs["changed_tokens"] < 0.7
    assert pairs["psnr"] > 45 and pairs["ssim"] > 0.999
    assert random["changed_tokens"] > 0.3
    assert random["psnr"] < pairs["psnr"] - 20 and random["ssim"] < 0.9


def test_plain_row_matches_the_tokenizer_evaluation(paired_vq, results, small_images):
    """Same padding, crop and [0, 1] scale as evaluate_vq_tokenizer; PSNR of its pooled MSE."""
    from masc_hf.training.vq_trainer import evaluate_vq_tokenizer

    mse = evaluate_vq_tokenizer(paired_vq, small_images)["mse"]
    assert results[PLAIN]["psnr_vs_original"] == pytest.approx(10 * math.log10(1 / mse), rel=1e-5)


def test_deterministic_by_seed_and_independent_of_batch_size(paired_vq, paired_maps, small_images, results):
    maps = {"random": paired_maps["random"]}
    again = replacement_test(paired_vq, maps, small_images, batch_size=7, progress=False)
    for key in ("changed_tokens", "psnr", "ssim", "psnr_vs_original"):
        assert again["random"][key] == pytest.approx(results["random"][key], rel=1e-6)  # float32 decoder, other batch shapes
    other = replacement_test(paired_vq, maps, small_images, seed=1, batch_size=16, progress=False)
    assert other["random"]["psnr"] != results["random"]["psnr"]


def test_ssim_matches_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    x = rng.random((3, 3, 20, 17))
    y = np.clip(x + 0.1 * rng.normal(size=x.shape), 0, 1)
    ours = structural_similarity(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    theirs = [
        skimage_metrics.structural_similarity(a.transpose(1, 2, 0), b.transpose(1, 2, 0), data_range=1.0, channel_axis=-1)
        for a, b in zip(x, y)
    ]
    np.testing.assert_allclose(ours, theirs, rtol=1e-10, atol=1e-12)
    gray = structural_similarity(torch.from_numpy(x[:, :1]), torch.from_numpy(y[:, :1]))[0]
    assert float(gray) == pytest.approx(skimage_metrics.structural_similarity(x[0, 0], y[0, 0], data_range=1.0), rel=1e-10)
    assert torch.equal(structural_similarity(torch.from_numpy(x), torch.from_numpy(x)), torch.ones(3, dtype=torch.float64))


def test_a_map_of_another_tokenizer_fails_before_any_encoding(paired_vq, paired_maps, small_images, monkeypatch):
    import masc_hf.vq.tokens as vq

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded images before checking the maps")

    monkeypatch.setattr(vq, "encode_images", no_encoding)
    other_codebook = np.random.default_rng(1).normal(size=(16, 4))
    foreign = build_cluster_map(other_codebook, 8, compute_quality=False)
    with pytest.raises(ClusterMapMismatchError, match=r"cluster map 'kmeans-elsewhere'.*build the map from this tokenizer's codebook"):
        replacement_test(paired_vq, {"pairs": paired_maps["pairs"], "kmeans-elsewhere": foreign}, small_images, progress=False)
    bigger = build_cluster_map(np.random.default_rng(2).normal(size=(32, 4)), 8, compute_quality=False)
    with pytest.raises(ClusterMapMismatchError, match=r"cluster map 'big'.*N=32 tokens.*has 16"):
        replacement_test(paired_vq, {"big": bigger}, small_images, progress=False)


@pytest.mark.parametrize(
    "images, match",
    [
        (np.zeros((2, 20, 20), np.uint8), "do not fit the tokenizer's 16x16"),
        (np.zeros((2, 12, 12), np.float32), "must be uint8"),
        (np.zeros((0, 12, 12), np.uint8), "no images"),
        (np.zeros((2, 5, 5), np.uint8), "smaller than SSIM's 7x7 window"),
    ],
)
def test_bad_images(paired_vq, paired_maps, images, match):
    with pytest.raises(DataError, match=match):
        replacement_test(paired_vq, {"pairs": paired_maps["pairs"]}, images, progress=False)


def test_pil_images_larger_than_the_input_are_centre_cropped(small_images):
    large = [PIL.Image.fromarray(np.full((24, 30), 7, np.uint8))] * 2
    array = images_as_array(large, image_size=16, channels=1)
    assert array.shape == (2, 16, 16) and (array == 7).all()
    assert images_as_array([PIL.Image.fromarray(im) for im in small_images[:3]], image_size=16).shape == (3, 12, 12)
    assert images_as_array(torch.from_numpy(small_images), image_size=16, limit=5).shape == (5, 12, 12)


def test_table_lists_every_map(results):
    table = format_replacement_table(results)
    lines = table.splitlines()
    assert lines[0].startswith("| map | method | k | changed tokens | PSNR vs recon")
    assert len(lines) == 2 + 4 and "rFID" not in lines[0]
    assert lines[2].startswith("| plain (reconstruction) | - | 16 | 0.0% | inf | 1.0000 |")
    assert lines[5].startswith("| singletons | masc | 16 | 0.0% | inf | 1.0000 |")


def test_cli_end_to_end(paired_vq, paired_maps, small_images, tmp_path, capsys):
    from masc_hf.cli import main

    paired_vq.save_pretrained(tmp_path / "vq")
    for name in ("pairs", "random"):
        paired_maps[name].save_pretrained(tmp_path / "maps" / name)
    np.save(tmp_path / "images.npy", small_images)
    out = tmp_path / "results.json"
    argv = ["replacement-test", "--vq", str(tmp_path / "vq"), "--maps", f"{tmp_path / 'maps' / 'pairs'},{tmp_path / 'maps' / 'random'}",
            "--images", str(tmp_path / "images.npy"), "--num-images", "24", "--batch-size", "10", "--out", str(out), "--device", "cpu"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "| pairs | masc | 8 |" in printed and "| random | random | 8 |" in printed and "24 images" in printed
    saved = json.loads(out.read_text())
    assert saved["settings"]["num_images"] == 24 and set(saved["results"]) == {PLAIN, "pairs", "random"}
    direct = replacement_test(paired_vq, {"random": paired_maps["random"]}, small_images[:24], batch_size=10, progress=False)
    assert saved["results"]["random"]["psnr"] == pytest.approx(direct["random"]["psnr"], rel=1e-6)

    # a map of another codebook: exit 2 with the map's name, before the (missing) images are read
    build_cluster_map(np.random.default_rng(3).normal(size=(16, 4)), 8, compute_quality=False).save_pretrained(tmp_path / "maps" / "foreign")
    argv = ["replacement-test", "--vq", str(tmp_path / "vq"), "--maps", str(tmp_path / "maps" / "foreign"),
            "--images", str(tmp_path / "missing.npy"), "--device", "cpu"]
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert "cluster map 'foreign'" in error and "missing.npy" not in error


def test_rfid_compares_replaced_with_plain_and_plain_with_originals(paired_vq, paired_maps, small_images, monkeypatch, tmp_path):
    """The wiring only (no Inception weights here): which images go to calculate_metrics, as what."""
    import masc_hf.evaluation.fidelity as fidelity

    calls = []

    def fake_metrics(samples, reference, **kwargs):
        calls.append((samples, reference, kwargs))
        return {"frechet_inception_distance": float(np.abs(samples.astype(float) - reference).mean())}

    monkeypatch.setattr(fidelity, "calculate_metrics", fake_metrics)
    weights = tmp_path / "inception.pth"
    with pytest.raises(fidelity.InceptionWeightsError):  # before any work
        replacement_test(paired_vq, {"pairs": paired_maps["pairs"]}, small_images, inception_weights=weights, progress=False)
    weights.write_bytes(b"stand-in")
    maps = {"pairs": paired_maps["pairs"], "singletons": paired_maps["singletons"]}
    results = replacement_test(paired_vq, maps, small_images, inception_weights=weights, progress=False)
    (plain, originals, kwargs), (pairs, plain_again, _), (singles, _, _) = calls
    assert plain.shape == originals.shape == (40, 12, 12, 3) and plain.dtype == originals.dtype == np.uint8
    assert kwargs["inception_weights"] == str(weights) and kwargs["isc"] is False and kwargs["prc"] is False
    np.testing.assert_array_equal(originals, np.repeat(small_images[..., None], 3, axis=3))  # gray replicated
    np.testing.assert_array_equal(plain_again, plain)
    np.testing.assert_array_equal(singles, plain)
    assert results["singletons"]["rfid"] == 0.0 and results[PLAIN]["rfid"] > 0
    assert "rFID" in format_replacement_table(results)
