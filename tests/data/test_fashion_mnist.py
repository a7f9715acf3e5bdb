"""Fashion-MNIST: the real files of the Debian package, the IDX reader, the error when absent."""

import gzip

import numpy as np
import pytest

from masc_hf.data.fashion_mnist import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, load_fashion_mnist, read_idx
from masc_hf.errors import DataError


@pytest.mark.skipif(not (FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz").is_file(), reason="dataset-fashion-mnist not installed")
def test_reads_the_real_files():
    train = load_fashion_mnist("train", hub=False)
    test = load_fashion_mnist("test", hub=False)
    assert train.images.shape == (60000, 28, 28) and train.images.dtype == np.uint8
    assert test.images.shape == (10000, 28, 28)
    assert train.labels.dtype == np.int64 and set(np.unique(train.labels)) == set(range(10))
    assert np.bincount(train.labels).tolist() == [6000] * 10  # the dataset is balanced
    assert len(train.class_names) == 10 and train.class_names[9] == "Ankle boot"
    assert 0 < train.images.mean() < 255 and train.images.flags.writeable


def write_idx(path, array, magic_type=0x08):
    header = bytes([0, 0, magic_type, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_idx_reader_on_generated_files(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 9, 3, 3, 1]))
    data = load_fashion_mnist("test", root=tmp_path, hub=False)
    np.testing.assert_array_equal(data.images, images)
    assert data.labels.tolist() == [0, 9, 3, 3, 1] and data.class_names == FASHION_MNIST_CLASSES and len(data) == 5
    # a truncated file is named, with the fix
    raw = gzip.decompress((tmp_path / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_missing_files_name_the_package(tmp_path, monkeypatch):
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path, hub=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the Hub is unreachable: the error still names the package
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("train", root=tmp_path)
    with pytest.raises(DataError, match="splits"):
        load_fashion_mnist("validation")
