"""Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017) as numpy arrays: 28x28 grayscale, 10 classes.

Read from the Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``,
the original IDX files, gzipped) when it is installed, else from the Hub
(``zalando-datasets/fashion_mnist``). No network is needed with the package.
"""

from __future__ import annotations

import gzip
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

logger = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
# split -> (images file, labels file), the names the original distribution uses
_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
# IDX magic numbers: two zero bytes, type 0x08 (unsigned byte), number of dimensions
_IDX_IMAGES_MAGIC = 0x00000803
_IDX_LABELS_MAGIC = 0x00000801


@dataclass(frozen=True)
class FashionMNIST:
    """One split: ``images [n, 28, 28]`` uint8 (0 = background), ``labels [n]`` int64 in
    ``[0, 10)``, ``class_names`` (10 names, index = label), and where it was read from."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    split: str
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None, *, hub: bool = True) -> FashionMNIST:
    """Fashion-MNIST ``split`` (``"train"``: 60000 images, ``"test"``: 10000).

    Args:
        split: ``"train"`` or ``"test"``.
        root: directory holding the four ``*-idx*-ubyte.gz`` files; default
            ``/usr/share/datasets/fashion-mnist`` (``apt-get install -y dataset-fashion-mnist``).
        hub: fall back to the Hub (``zalando-datasets/fashion_mnist``) when the files are absent.
    """
    if split not in _FILES:
        raise DataError(f"Fashion-MNIST has splits {sorted(_FILES)}, got {split!r}")
    directory = Path(root) if root is not None else FASHION_MNIST_DIR
    images_file, labels_file = (directory / name for name in _FILES[split])
    if images_file.is_file() and labels_file.is_file():
        images = read_idx(images_file, _IDX_IMAGES_MAGIC)
        labels = read_idx(labels_file, _IDX_LABELS_MAGIC).astype(np.int64)
        if images.shape[0] != labels.shape[0]:
            raise DataError(f"{images_file} holds {images.shape[0]} images but {labels_file} {labels.shape[0]} labels; reinstall the files")
        return _checked(FashionMNIST(images, labels, FASHION_MNIST_CLASSES, split, str(directory)))
    if not hub:
        raise DataError(f"Fashion-MNIST files not found in {directory}; install them with `apt-get install -y dataset-fashion-mnist`")
    logger.info("Fashion-MNIST files not found in %s; reading %s from the Hub", directory, FASHION_MNIST_HUB_ID)
    return _checked(_load_from_hub(split, directory))


def read_idx(path: str | os.PathLike, magic: int | None = None) -> np.ndarray:
    """An IDX file (gzipped or not) of unsigned bytes as a uint8 array of its stated shape."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except OSError as err:
        raise DataError(f"could not read {path} ({err}); reinstall it (apt-get install --reinstall dataset-fashion-mnist)") from err
    if len(raw) < 4:
        raise DataError(f"{path} is too short to be an IDX file ({len(raw)} bytes)")
    found = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if found >> 8 != 0x08 or (magic is not None and found != magic):
        raise DataError(f"{path} is not an unsigned-byte IDX file of the expected kind (magic {found:#010x}); reinstall it")
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"{path} states shape {shape} but holds {len(raw) - header} bytes of data; the file is truncated, reinstall it")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape).copy()  # writable


def _load_from_hub(split: str, directory: Path) -> FashionMNIST:
    try:
        import datasets

        dataset = datasets.load_dataset(FASHION_MNIST_HUB_ID, split=split)
        images = np.stack([np.asarray(image, dtype=np.uint8) for image in dataset["image"]])
        labels = np.asarray(dataset["label"], dtype=np.int64)
    except Exception as err:  # offline, no network, Hub error: the package is the fix
        raise DataError(
            f"Fashion-MNIST is neither in {directory} nor reachable on the Hub ({type(err).__name__}: {err}); "
            "install it with `apt-get install -y dataset-fashion-mnist` (or pass root= to a directory holding the IDX files)"
        ) from err
    return FashionMNIST(images, labels, FASHION_MNIST_CLASSES, split, f"hf://datasets/{FASHION_MNIST_HUB_ID}")


def _checked(data: FashionMNIST) -> FashionMNIST:
    if data.images.ndim != 3 or data.images.shape[1:] != (28, 28):
        raise DataError(f"Fashion-MNIST images from {data.source} have shape {data.images.shape}, expected [n, 28, 28]")
    if data.labels.size and (data.labels.min() < 0 or data.labels.max() >= len(data.class_names)):
        raise DataError(f"Fashion-MNIST labels from {data.source} fall outside [0, 10)")
    return data
