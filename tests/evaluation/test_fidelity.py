"""FID/IS/Precision/Recall through torch-fidelity: against torch-fidelity called directly, against our
own Fréchet distance on the same features, across input forms, and every bad input.

The real Inception weights cannot be downloaded here, so torch-fidelity's own InceptionV3 class is
given deterministic random weights (saved to a file and passed as the weights path): all of
torch-fidelity's code runs, only the numbers mean nothing. Two changes keep it fast on one CPU
thread: images are resized to 75 px inside the network instead of 299 (the class's
``INPUT_IMAGE_SIZE``), and all but 96 of the 2048 pool3 features are dead (zero), which makes the
2048x2048 eigenvalue problem of FID cheap without changing any code path.
"""

import hashlib
import json
from unittest import mock

import numpy as np
import pytest

torch_fidelity = pytest.importorskip("torch_fidelity")
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3, FeatureExtractorInceptionV3  # noqa: E402
from torch_fidelity.metric_fid import fid_features_to_statistics  # noqa: E402

from masc_hf.evaluation import fidelity  # noqa: E402
from masc_hf.evaluation.fidelity import (  # noqa: E402
    INCEPTION_WEIGHTS_ENV,
    INCEPTION_WEIGHTS_FILE,
    INCEPTION_WEIGHTS_URL,
    FidelityError,
    InceptionWeightsError,
    calculate_metrics,
    resolve_inception_weights,
    save_statistics,
)
from masc_hf.evaluation.frechet import feature_statistics, frechet_distance  # noqa: E402
from masc_hf.evaluation.sampling import SampleError  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # torch-fidelity's 4 workers

N, SIZE = 12, 32
# torch-fidelity's defaults but for the split count (12 images in 10 splits would be ~1 image each)
OPTIONS = dict(device="cpu", progress=False, isc_splits=3)


@pytest.fixture(scope="module", autouse=True)
def small_inception():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75)
        yield


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """Deterministic random weights for torch-fidelity's InceptionV3, as a weights file; while the
    module runs, the expected sha256 is the stand-in's (the real file cannot be downloaded here)."""
    torch.manual_seed(0)
    with mock.patch.object(FeatureExtractorInceptionV3, "load_state_dict", lambda self, *a, **k: None), mock.patch(
        "torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", lambda *a, **k: {}
    ):
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    with torch.no_grad():
        for module in net.modules():  # keep activations at a useful scale through 94 layers
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        torch.nn.init.normal_(net.fc.weight, std=2048**-0.5)
        last = net.Mixed_7c
        for block in (last.branch1x1, last.branch3x3_2a, last.branch3x3_2b, last.branch3x3dbl_3a, last.branch3x3dbl_3b, last.branch_pool):
            block.bn.weight[16:] = 0  # dead pool3 features: see the module docstring
            block.bn.bias[16:] = 0
    path = tmp_path_factory.mktemp("inception") / INCEPTION_WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fidelity, "INCEPTION_WEIGHTS_SHA256_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest())
        yield str(path)


def _images(seed: int, tilt: float, n: int = N, size: int = SIZE) -> np.ndarray:
    """uint8 [n, size, size, 3]: noisy colour waves, one distribution per ``tilt``."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    images = []
    for _ in range(n):
        freq, phase = rng.uniform(1, 4, size=3), rng.uniform(0, 2 * np.pi, size=3)
        waves = np.stack([np.sin(2 * np.pi * freq[c] * (x + tilt * y) + phase[c]) for c in range(3)], axis=-1)
        images.append(np.clip(np.rint((0.5 + 0.4 * waves + rng.normal(0, 0.05, waves.shape)) * 255), 0, 255))
    return np.stack(images).astype(np.uint8)


def _write_folder(folder, images: np.ndarray):
    folder.mkdir(parents=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:06d}.png")
    return folder


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("images")
    out = {}
    for name, seed, tilt in (("a", 0, 0.0), ("b", 1, 1.0), ("c", 2, -1.0)):
        images = _images(seed, tilt)
        out[name] = images
        out[f"{name}_dir"] = str(_write_folder(root / name, images))
        np.savez(root / f"{name}.npz", arr_0=images)
        out[f"{name}_npz"] = str(root / f"{name}.npz")
    return out


@pytest.fixture(scope="module")
def metrics_ab(data, weights) -> dict:
    return calculate_metrics(data["a_dir"], data["b_dir"], inception_weights=weights, **OPTIONS)


@pytest.fixture(scope="module")
def direct_features(data, weights) -> dict:
    """pool3 features of a and b from torch-fidelity's extractor, called by hand on tensors."""
    net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=weights)
    with torch.no_grad():
        return {name: net(torch.from_numpy(data[name]).permute(0, 3, 1, 2).contiguous())[0].double().numpy() for name in "ab"}


@pytest.fixture
def no_heavy_work(monkeypatch):
    """Fail the test if the Inception network is built: errors must come before any long work."""

    def fail(*args, **kwargs):
        raise AssertionError("the feature extractor was built before the bad input was refused")

    monkeypatch.setattr(fidelity, "_feature_extractor", fail)


# ------------------------------------------------------------------------------- against independent computations
def test_wrapper_equals_torch_fidelity_on_two_folders(data, weights, metrics_ab):
    theirs = torch_fidelity.calculate_metrics(
        input1=data["a_dir"], input2=data["b_dir"], cuda=False, isc=True, fid=True, prc=True, isc_splits=3,
        feature_extractor="inception-v3-compat", feature_extractor_weights_path=weights, cache=False, verbose=False,
    )
    assert set(theirs) <= set(metrics_ab)
    for key, value in theirs.items():
        assert metrics_ab[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert metrics_ab["fid"] == metrics_ab["frechet_inception_distance"] > 0
    assert metrics_ab["is_mean"] == metrics_ab["inception_score_mean"] >= 1
    assert metrics_ab["is_std"] == metrics_ab["inception_score_std"]
    assert 0 <= metrics_ab["precision"] <= 1 and 0 <= metrics_ab["recall"] <= 1


def test_fid_equals_our_frechet_distance_on_the_same_features(metrics_ab, direct_features):
    a, b = direct_features["a"], direct_features["b"]
    # FID only sees the span of the centred features and the mean difference: project onto an
    # orthonormal basis of it (exact), so that our sqrtm-based distance runs on 25 dimensions, not 2048
    basis, _ = np.linalg.qr(np.concatenate([a - a.mean(0), b - b.mean(0), (a.mean(0) - b.mean(0))[None]]).T)
    mu_a, sigma_a = feature_statistics(a @ basis)
    mu_b, sigma_b = feature_statistics(b @ basis)
    ours = frechet_distance(mu_a, sigma_a, mu_b, sigma_b, eps=0.0)
    assert metrics_ab["fid"] == pytest.approx(ours, rel=1e-5)


def test_fid_of_a_set_with_itself_is_zero(data, weights, metrics_ab):
    metrics = calculate_metrics(data["a_dir"], data["a_npz"], inception_weights=weights, isc=False, prc=False, **OPTIONS)
    assert set(metrics) == {"frechet_inception_distance", "fid"}
    assert abs(metrics["fid"]) < 1e-6 * metrics_ab["fid"]


def test_npz_and_array_give_the_statistics_of_the_network(data, weights, direct_features, tmp_path):
    # (a folder and an .npz of the same images give FID 0 in test_fid_of_a_set_with_itself_is_zero)
    expected = fid_features_to_statistics(torch.from_numpy(direct_features["b"]).float())
    for i, source in enumerate((data["b_npz"], data["b"])):
        path = save_statistics(source, tmp_path / f"stats{i}.npz", inception_weights=weights, device="cpu", progress=False)
        with np.load(path) as saved:
            assert saved["mu"].dtype == saved["sigma"].dtype == np.float64 and int(saved["num_images"]) == N
            np.testing.assert_allclose(saved["mu"], expected["mu"], rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(saved["sigma"], expected["sigma"], rtol=1e-4, atol=1e-9)
            if i == 0:
                first = dict(saved)
            else:  # both forms feed the network the same pixels
                np.testing.assert_array_equal(saved["mu"], first["mu"])
                np.testing.assert_array_equal(saved["sigma"], first["sigma"])


def test_an_adm_reference_batch_gives_fid_from_its_statistics_and_prc_from_its_images(
    data, weights, metrics_ab, direct_features, tmp_path
):
    # ADM's layout: arr_0 (images) beside mu/sigma. Images of a, statistics of b, against samples a:
    # FID must be a vs b (as from b's images), and precision/recall a vs a (every sample on the manifold).
    stats = fid_features_to_statistics(torch.from_numpy(direct_features["b"]).float())
    np.savez(tmp_path / "ref.npz", arr_0=data["a"], mu=stats["mu"].astype(np.float64), sigma=stats["sigma"])
    metrics = calculate_metrics(data["a"], tmp_path / "ref.npz", inception_weights=weights, isc=False, **OPTIONS)
    assert metrics["fid"] == pytest.approx(metrics_ab["fid"], rel=1e-6)
    assert metrics["precision"] == metrics["recall"] == 1.0


def test_cache_dir_reuses_features(data, weights, tmp_path, monkeypatch):
    options = dict(inception_weights=weights, fid=False, isc=True, prc=True, cache_dir=tmp_path / "cache", **OPTIONS)
    first = calculate_metrics(data["a_npz"], data["b_dir"], **options)
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2

    def fail(*args, **kwargs):
        raise AssertionError("features were extracted again")

    monkeypatch.setattr("torch_fidelity.utils.get_featuresdict_from_dataset", fail)
    assert calculate_metrics(data["a_npz"], data["b_dir"], **options) == first


def test_cli_writes_json_and_prints_a_table(data, weights, tmp_path, capsys):
    from masc_hf.cli import main

    out = tmp_path / "metrics.json"
    code = main(["evaluate", "--samples", data["a_npz"], "--reference", data["b_dir"], "--inception-weights", weights,
                 "--metrics", "is,prc", "--device", "cpu", "--out", str(out), "--no-progress"])
    assert code == 0
    report = json.loads(out.read_text())
    assert set(report["metrics"]) >= {"is_mean", "is_std", "precision", "recall"} and "fid" not in report["metrics"]
    assert report["samples"] == data["a_npz"] and report["inception_weights"] == weights
    printed = capsys.readouterr().out
    assert "precision" in printed and "recall" in printed


def test_npz_images_are_memory_mapped_when_stored(data, tmp_path):
    from masc_hf.evaluation.sampling import load_npz_images, pack_npz

    np.savez_compressed(tmp_path / "compressed.npz", arr_0=data["a"])
    np.savez(tmp_path / "with_stats.npz", mu=np.zeros(3), arr_0=data["a"])
    packed = pack_npz(data["a_dir"], tmp_path / "packed.npz")  # a zip64 member
    for path, mapped in ((data["a_npz"], True), (tmp_path / "with_stats.npz", True), (packed, True),
                         (tmp_path / "compressed.npz", False)):
        images = load_npz_images(path)
        assert isinstance(images, np.memmap) == mapped
        np.testing.assert_array_equal(images, data["a"])


# ------------------------------------------------------------------------------- the weights file
def test_weights_constants_are_torch_fidelitys():
    assert INCEPTION_WEIGHTS_URL == URL_INCEPTION_V3
    assert INCEPTION_WEIGHTS_URL.rsplit("/", 1)[1] == INCEPTION_WEIGHTS_FILE


def test_weights_resolution_order(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
    with pytest.raises(InceptionWeightsError) as caught:
        resolve_inception_weights()
    message = str(caught.value)
    # the exact download address, the file name, and the three ways to provide it
    for needle in (INCEPTION_WEIGHTS_URL, INCEPTION_WEIGHTS_FILE, INCEPTION_WEIGHTS_ENV, "--inception-weights", str(cached)):
        assert needle in message
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert resolve_inception_weights() == str(cached)
    from_env = tmp_path / "env.pth"
    from_env.write_bytes(b"x")
    monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(from_env))
    assert resolve_inception_weights() == str(from_env)
    assert resolve_inception_weights(cached) == str(cached)  # an explicit path wins


def test_missing_weights_are_refused_first(data, tmp_path, no_heavy_work):
    with pytest.raises(InceptionWeightsError, match="releases/download/v0.2.0/weights-inception-2015-12-05-6726825d.pth"):
        calculate_metrics(data["a_dir"], data["b_dir"], inception_weights=tmp_path / "nowhere.pth", **OPTIONS)


def test_unloadable_weights_say_which_file_is_needed(data, tmp_path):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(InceptionWeightsError, match=INCEPTION_WEIGHTS_FILE):
        calculate_metrics(data["a"], data["b"], inception_weights=bad, **OPTIONS)


# ------------------------------------------------------------------------------- bad inputs, refused before any long work
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda d: d["a"].astype(np.float32) / 255, "uint8"),
        (lambda d: d["a"].transpose(0, 3, 1, 2), "channels-first"),
        (lambda d: d["a"][..., 0], r"\[N, H, W, 3\]"),
    ],
    ids=["float", "channels-first", "gray"],
)
@pytest.mark.parametrize("form", ["npz", "array"])
def test_bad_dtype_or_shape(data, weights, tmp_path, no_heavy_work, make, match, form):
    images = make(data)
    if form == "npz":
        np.savez(tmp_path / "bad.npz", arr_0=images)
        images = tmp_path / "bad.npz"
    with pytest.raises(SampleError, match=match):
        calculate_metrics(images, data["b_npz"], inception_weights=weights, **OPTIONS)


def test_a_folder_image_of_another_size(data, weights, tmp_path, no_heavy_work):
    folder = _write_folder(tmp_path / "s", data["a"])
    Image.fromarray(data["a"][3, :16, :16]).save(folder / "000003.png")
    with pytest.raises(SampleError, match="000003.png is 16x16"):
        calculate_metrics(folder, data["b_npz"], inception_weights=weights, **OPTIONS)


@pytest.mark.parametrize("form", ["a_dir", "a_npz", "a"])
def test_a_wrong_count(data, weights, no_heavy_work, form):
    with pytest.raises(SampleError, match=f"{N} images but {N + 1}"):
        calculate_metrics(data[form], data["b_npz"], inception_weights=weights, expected_count=N + 1, **OPTIONS)


def test_samples_of_another_size_than_the_reference(data, weights, no_heavy_work):
    small = data["a"][:, :16, :16]
    with pytest.raises(SampleError, match=r"16x16 images but the reference .* 32x32.*expected_size=\(16, 16\)"):
        calculate_metrics(small, data["b_npz"], inception_weights=weights, **OPTIONS)
    with pytest.raises(SampleError, match="16x16 images but 32x32 is expected"):
        calculate_metrics(small, data["b_npz"], inception_weights=weights, expected_size=32, **OPTIONS)
    with pytest.raises(AssertionError, match="extractor was built"):  # an explicit size lets it through
        calculate_metrics(small, data["b_npz"], inception_weights=weights, expected_size=16, **OPTIONS)


def test_statistics_only_reference(data, weights, tmp_path, no_heavy_work):
    mu, sigma = np.zeros(2048), np.eye(2048)
    np.savez(tmp_path / "stats.npz", mu=mu, sigma=sigma)
    with pytest.raises(FidelityError, match="statistics only .* precision/recall"):
        calculate_metrics(data["a"], tmp_path / "stats.npz", inception_weights=weights, **OPTIONS)
    with pytest.raises(AssertionError, match="extractor was built"):  # FID and IS are fine
        calculate_metrics(data["a"], tmp_path / "stats.npz", inception_weights=weights, prc=False, **OPTIONS)
    np.savez(tmp_path / "bad_stats.npz", mu=mu[:64], sigma=sigma[:64, :64])
    with pytest.raises(FidelityError, match=r"not Inception pool3 statistics"):
        calculate_metrics(data["a"], tmp_path / "bad_stats.npz", inception_weights=weights, prc=False, **OPTIONS)


def test_bad_requests(data, weights, tmp_path, no_heavy_work):
    with pytest.raises(FidelityError, match="no metric"):
        calculate_metrics(data["a"], data["b"], inception_weights=weights, fid=False, isc=False, prc=False, **OPTIONS)
    with pytest.raises(FidelityError, match="reference"):
        calculate_metrics(data["a"], None, inception_weights=weights, **OPTIONS)
    with pytest.raises(FidelityError, match="prc_neighborhood"):
        calculate_metrics(data["a"][:3], data["b"], inception_weights=weights, expected_size=32, prc_neighborhood=3, **OPTIONS)
    with pytest.raises(SampleError, match="does not exist"):
        calculate_metrics(tmp_path / "missing.npz", data["b"], inception_weights=weights, **OPTIONS)
    with pytest.raises(SampleError, match="no arr_0"):
        np.savez(tmp_path / "other.npz", images=data["a"])
        calculate_metrics(tmp_path / "other.npz", data["b"], inception_weights=weights, **OPTIONS)


def test_is_with_fewer_images_than_splits_is_an_error(data, weights, no_heavy_work):
    # torch-fidelity would average empty splits and report NaN
    with pytest.raises(FidelityError, match=r"holds 3 images, fewer than the Inception Score's isc_splits=10"):
        calculate_metrics(data["a"][:3], None, inception_weights=weights, fid=False, prc=False, device="cpu", progress=False, isc_splits=10)


def test_weights_of_another_file_are_refused_before_any_work(data, tmp_path, no_heavy_work):
    other = tmp_path / INCEPTION_WEIGHTS_FILE  # the right name is not enough
    torch.save({"fc.weight": torch.zeros(2)}, other)
    with pytest.raises(InceptionWeightsError, match=f"sha256 is [0-9a-f]{{16}}.*{INCEPTION_WEIGHTS_URL}"):
        calculate_metrics(data["a"], data["b"], inception_weights=other, **OPTIONS)
