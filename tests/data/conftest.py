"""Generated data for the data-layer tests: tiny PNG folders and parquet shards, a tiny VQModel."""

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


# A PNG that stops half-way through its pixel data: it opens, and fails when decoded.
def truncated_png(size=(12, 10)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    data = buffer.getvalue()
    return data[: len(data) // 2]


NOT_AN_IMAGE = b"this is not an image"


def solid_png(value: int, size=(12, 10)) -> bytes:
    """A PNG whose pixels all equal ``value`` (so its content identifies it)."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """train/{a,b}/: 7 good PNGs (3 in a, 4 in b) and, in a, one truncated and one non-image .png."""
    root = tmp_path / "folder"
    for value, cls in [(10, "a"), (20, "a"), (30, "a"), (40, "b"), (50, "b"), (60, "b"), (70, "b")]:
        (root / "train" / cls).mkdir(parents=True, exist_ok=True)
        (root / "train" / cls / f"{value}.png").write_bytes(solid_png(value))
    (root / "train" / "a" / "31_truncated.png").write_bytes(truncated_png())
    (root / "train" / "a" / "32_garbage.png").write_bytes(NOT_AN_IMAGE)
    return root


def write_parquet_shards(directory: Path, num_shards: int, per_shard: int, bad: set[int] = frozenset()) -> list[int]:
    """Parquet shards whose example ``i`` is a solid PNG of value ``i`` with label ``i`` (indices in
    ``bad`` hold undecodable bytes). Returns the indices of the good examples."""
    from datasets import Dataset, Features, Image as ImageFeature, Value

    directory.mkdir(parents=True, exist_ok=True)
    features = Features({"image": ImageFeature(), "label": Value("int64")})
    index = 0
    for shard in range(num_shards):
        rows = {"image": [], "label": []}
        for _ in range(per_shard):
            data = NOT_AN_IMAGE if index in bad else solid_png(index)
            rows["image"].append({"bytes": data, "path": None})
            rows["label"].append(index)
            index += 1
        Dataset.from_dict(rows, features=features).to_parquet(str(directory / f"train-{shard:05d}-of-{num_shards:05d}.parquet"))
    return [i for i in range(index) if i not in bad]


@pytest.fixture
def make_parquet():
    """``make_parquet(directory, num_shards, per_shard, bad=set()) -> good indices``."""
    return write_parquet_shards


@pytest.fixture
def parquet_dir(tmp_path) -> tuple[Path, list[int]]:
    """4 parquet shards of 5 examples; examples 3 and 12 are not images."""
    good = write_parquet_shards(tmp_path / "parquet", num_shards=4, per_shard=5, bad={3, 12})
    return tmp_path / "parquet", good


def tiny_vqmodel(seed: int = 0):
    """A random diffusers VQModel: RGB, downsample factor 2, 32 codes of dimension 4."""
    import torch
    from diffusers import VQModel

    torch.manual_seed(seed)
    return VQModel(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(8, 16),
        layers_per_block=1,
        latent_channels=4,
        num_vq_embeddings=32,
        vq_embed_dim=4,
        norm_num_groups=4,
        sample_size=8,
    ).eval()


@pytest.fixture(scope="session")
def vqmodel():
    return tiny_vqmodel()
