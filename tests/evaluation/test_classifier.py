"""The small image classifier: learning, input handling, save/load, class consistency, features."""

import numpy as np
import pytest
import torch
from PIL import Image

from masc_hf.evaluation.classifier import (
    ClassifierError,
    ImageClassifier,
    ImageClassifierConfig,
    class_consistency,
    classifier_accuracy,
    to_classifier_input,
    train_classifier,
)
from masc_hf.evaluation.frechet import feature_statistics, frechet_distance

TINY = ImageClassifierConfig(num_classes=4, conv_channels=(8, 8, 16), feature_dim=16, dropout=0.0)


def quadrant_images(n, seed):
    """4 classes: a bright 10x10 square in one quadrant of a noisy dark 28x28 image."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=n)
    images = rng.integers(0, 60, size=(n, 28, 28)).astype(np.uint8)
    for image, label in zip(images, labels):
        top, left = 2 + 14 * (label // 2) + rng.integers(0, 3), 2 + 14 * (label % 2) + rng.integers(0, 3)
        image[top : top + 10, left : left + 10] = rng.integers(180, 256)
    return images, labels


@pytest.fixture(scope="module")
def trained():
    images, labels = quadrant_images(384, seed=0)
    classifier, stats = train_classifier(images, labels, config=TINY, epochs=3, batch_size=32, lr=5e-3, seed=0, progress=False)
    return classifier, stats


def test_learns_a_separable_task(trained):
    classifier, stats = trained
    images, labels = quadrant_images(200, seed=1)
    assert classifier_accuracy(classifier, images, labels) >= 0.95
    assert np.mean(stats["loss"][-5:]) < 0.5 * np.mean(stats["loss"][:5])


def test_training_is_deterministic_for_a_seed():
    images, labels = quadrant_images(64, seed=2)
    first, _ = train_classifier(images, labels, config=TINY, epochs=1, batch_size=16, seed=3, progress=False)
    second, _ = train_classifier(images, labels, config=TINY, epochs=1, batch_size=16, seed=3, progress=False)
    other, _ = train_classifier(images, labels, config=TINY, epochs=1, batch_size=16, seed=4, progress=False)
    for key, value in first.state_dict().items():
        assert torch.equal(value, second.state_dict()[key]), key
    assert not torch.equal(first.convs[0][0].weight, other.convs[0][0].weight)


def test_class_consistency_is_the_share_assigned_to_the_conditioning_class(trained):
    classifier, _ = trained
    images, _ = quadrant_images(40, seed=5)
    predicted = classifier.predict(images)
    assert class_consistency(classifier, images, predicted) == 1.0
    assert class_consistency(classifier, images, (predicted + 1) % 4) == 0.0
    half = predicted.copy()
    half[:20] = (half[:20] + 1) % 4
    assert class_consistency(classifier, images, half) == pytest.approx(0.5)


def test_every_input_kind_gives_the_same_predictions(trained):
    classifier, _ = trained
    images, _ = quadrant_images(24, seed=6)
    expected = classifier.predict(images)
    rgb = np.repeat(images[..., None], 3, axis=3)
    as_float = torch.from_numpy(images).float().div(255).unsqueeze(1)  # [n, 1, 28, 28] in [0, 1]
    padded = np.pad(rgb, [(0, 0), (2, 2), (2, 2), (0, 0)])  # a tokenizer's 32x32 canvas
    assert np.array_equal(classifier.predict([Image.fromarray(image) for image in images]), expected)
    assert np.array_equal(classifier.predict([Image.fromarray(image) for image in rgb]), expected)
    assert np.array_equal(classifier.predict(rgb), expected)
    assert np.array_equal(classifier.predict(as_float), expected)
    assert np.array_equal(classifier.predict(as_float.expand(-1, 3, -1, -1).numpy().transpose(0, 2, 3, 1)), expected)
    assert np.array_equal(classifier.predict(padded, center_crop=28), expected)
    # a 2x larger copy is resized back to 28x28
    large = torch.from_numpy(images).unsqueeze(1).repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    assert (classifier.predict(large) == expected).mean() >= 0.9


def test_input_conversion():
    gray = np.random.default_rng(7).integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    converted = to_classifier_input(gray)
    assert converted.shape == (3, 1, 28, 28) and converted.dtype == torch.float32
    torch.testing.assert_close(converted[:, 0], torch.from_numpy(gray).float() / 255)
    # RGB of equal channels is the same gray (luma weights sum to 1)
    torch.testing.assert_close(to_classifier_input(np.repeat(gray[..., None], 3, axis=3)), converted)
    assert to_classifier_input(torch.rand(2, 3, 64, 48)).shape == (2, 1, 28, 28)
    padded = np.pad(gray, [(0, 0), (2, 2), (2, 2)])
    torch.testing.assert_close(to_classifier_input(padded, center_crop=28), converted)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(2, 3, 28, 28) * 2 - 1, r"\(x \+ 1\) / 2"),
        (np.zeros((2, 28, 28), dtype=np.int32), "uint8 or float"),
        (torch.rand(2, 2, 28, 28), "1, 3 or 4 channels"),
        (np.zeros((28, 28), dtype=np.uint8), r"\[n, H, W\]"),
        ("images.png", "PIL images"),
    ],
)
def test_bad_inputs_are_refused(bad, match):
    with pytest.raises(ClassifierError, match=match):
        to_classifier_input(bad)


def test_bad_labels_are_refused():
    images, labels = quadrant_images(8, seed=8)
    with pytest.raises(ClassifierError, match=r"lie in \[0, 4\)"):
        train_classifier(images, labels + 4, config=TINY, progress=False)
    with pytest.raises(ClassifierError, match="one per image"):
        train_classifier(images, labels[:-1], config=TINY, progress=False)


def test_save_and_load_round_trip(trained, tmp_path):
    classifier, _ = trained
    classifier.metrics["test_accuracy"] = 0.5
    images, _ = quadrant_images(16, seed=9)
    target = tmp_path / "classifier"
    classifier.save_pretrained(target)
    assert sorted(p.name for p in target.iterdir()) == ["config.json", "model.safetensors"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind
    loaded = ImageClassifier.from_pretrained(target)
    assert loaded.config == classifier.config and loaded.metrics == {"test_accuracy": 0.5}
    assert np.array_equal(loaded.predict(images), classifier.predict(images))
    np.testing.assert_array_equal(loaded.features(images), classifier.features(images))
    loaded.save_pretrained(target)  # overwriting a classifier directory is fine
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(ClassifierError, match="notes.txt"):
        classifier.save_pretrained(tmp_path / "other")
    (target / "model.safetensors").unlink()
    with pytest.raises(ClassifierError, match="model.safetensors"):
        ImageClassifier.from_pretrained(target)


def test_features_separate_classes(trained):
    classifier, _ = trained
    images, labels = quadrant_images(400, seed=10)
    features = classifier.features(images)
    assert features.shape == (400, 16) and features.dtype == np.float32
    # same-class halves are closer in feature space than two different classes
    a, b = features[labels == 0], features[labels == 3]
    same = frechet_distance(*feature_statistics(a[: len(a) // 2]), *feature_statistics(a[len(a) // 2 :]))
    different = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert different > 5 * same


def test_fashion_mnist_subset():
    fashion_mnist = pytest.importorskip("masc_hf.data.fashion_mnist")
    try:
        train = fashion_mnist.load_fashion_mnist("train", hub=False)
        test = fashion_mnist.load_fashion_mnist("test", hub=False)
    except fashion_mnist.DataError as err:
        pytest.skip(f"Fashion-MNIST not installed: {err}")
    config = ImageClassifierConfig(conv_channels=(8, 16, 16), feature_dim=32, class_names=train.class_names)
    classifier, stats = train_classifier(
        train.images[:3000], train.labels[:3000], config=config, epochs=1, batch_size=64, seed=0,
        eval_images=test.images[:1000], eval_labels=test.labels[:1000], progress=False,
    )
    assert stats["test_accuracy"] > 0.6  # chance is 0.1; the full run reaches about 0.9
    assert classifier.metrics["test_accuracy"] == stats["test_accuracy"]
    assert classifier.config.class_names[0] == "T-shirt/top"
