"""Data: streamed image datasets, LlamaGen's image transforms, Fashion-MNIST, token-code shards.

* ``images``: :class:`ImageStream`, a streamed ``datasets`` source (Hub id, parquet shards, image
  folder), this process's part, decoded by us so corrupt images are skipped and counted.
* ``transforms``: LlamaGen's centre crop, ``[-1, 1]`` tensors, its extraction views (flip, ten-crop).
* ``fashion_mnist``: :func:`load_fashion_mnist`, numpy arrays from the Debian package or the Hub.
* ``code_shards``: token-code shards on disk (:class:`CodeShardWriter`, :class:`CodeShardManifest`)
  and the training dataset over them (:class:`CodeShardDataset`).
* ``extract``: :func:`extract_codes`, images -> code shards with a VQ tokenizer, multi-process and
  resumable (``recipes/extract_codes.py``).

The namespace is lazy: ``import masc_hf.data`` imports neither torch nor datasets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import attach

# public name -> module that defines it
_LAZY = {
    "ImageStream": "masc_hf.data.images",
    "decode_image": "masc_hf.data.images",
    "open_streaming_dataset": "masc_hf.data.images",
    "AUGMENTATIONS": "masc_hf.data.transforms",
    "center_crop": "masc_hf.data.transforms",
    "extraction_views": "masc_hf.data.transforms",
    "ten_crop": "masc_hf.data.transforms",
    "to_tensor": "masc_hf.data.transforms",
    "images_to_tensor": "masc_hf.data.pixels",
    "psnr": "masc_hf.data.pixels",
    "FASHION_MNIST_CLASSES": "masc_hf.data.fashion_mnist",
    "FashionMNIST": "masc_hf.data.fashion_mnist",
    "load_fashion_mnist": "masc_hf.data.fashion_mnist",
    "CodeShardDataset": "masc_hf.data.code_shards",
    "CodeShardManifest": "masc_hf.data.code_shards",
    "CodeShardWriter": "masc_hf.data.code_shards",
    "codes_dtype_for": "masc_hf.data.code_shards",
    "finalize_code_shards": "masc_hf.data.code_shards",
    "extract_codes": "masc_hf.data.extract",
    "load_vqmodel": "masc_hf.data.extract",
}

__getattr__, __dir__, __all__ = attach(__name__, _LAZY)




if TYPE_CHECKING:  # pragma: no cover
    from .code_shards import CodeShardDataset, CodeShardManifest, CodeShardWriter, codes_dtype_for, finalize_code_shards
    from .extract import extract_codes, load_vqmodel
    from .fashion_mnist import FASHION_MNIST_CLASSES, FashionMNIST, load_fashion_mnist
    from .images import ImageStream, decode_image, open_streaming_dataset
    from .pixels import images_to_tensor, psnr
    from .transforms import AUGMENTATIONS, center_crop, extraction_views, ten_crop, to_tensor
