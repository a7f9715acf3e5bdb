"""Streaming image sources: corrupt images skipped and counted, sources, splitting between ranks."""

import logging

import numpy as np
import pytest

from masc_hf.data.images import ImageStream, decode_image
from masc_hf.errors import DataError, MASCError


def values(pairs):
    return sorted(int(np.asarray(image)[0, 0, 0]) for image, _ in pairs)


def test_image_folder_skips_and_counts_bad_images(image_folder, caplog):
    stream = ImageStream(image_folder)
    assert stream.class_names == ["a", "b"]
    with caplog.at_level(logging.WARNING, logger="masc_hf.data.images"):
        pairs = list(stream)
    # the bad files sit between good ones in the stream (a/31_truncated, a/32_garbage): it went on past them
    assert values(pairs) == [10, 20, 30, 40, 50, 60, 70]
    assert [label for _, label in pairs] == [0, 0, 0, 1, 1, 1, 1]
    assert stream.num_skipped == 2
    assert "31_truncated.png" in caplog.text and "32_garbage.png" in caplog.text
    assert "skipped 2 of 9 images" in caplog.text
    assert all(image.mode == "RGB" and image.size == (12, 10) for image, _ in pairs)


def test_parquet_sources_dir_file_and_glob(parquet_dir):
    directory, good = parquet_dir
    for source in [directory, str(directory / "*.parquet")]:
        stream = ImageStream(source)
        pairs = list(stream)
        assert [label for _, label in pairs] == good
        assert values(pairs) == good
        assert stream.num_skipped == 2 and stream.num_shards == 4
    one = ImageStream(sorted(directory.glob("*.parquet"))[1])
    assert [label for _, label in one] == [5, 6, 7, 8, 9]


def test_parquet_directory_splits_come_from_file_names(parquet_dir, tmp_path):
    # the layout of a downloaded Hub dataset: data/train-*.parquet beside data/validation-*.parquet
    shards = sorted(parquet_dir[0].glob("*.parquet"))
    (tmp_path / "hub" / "data").mkdir(parents=True)
    for i, shard in enumerate(shards[:3]):
        (tmp_path / "hub" / "data" / f"train-{i:05d}-of-00003.parquet").write_bytes(shard.read_bytes())
    (tmp_path / "hub" / "data" / "validation-00000-of-00001.parquet").write_bytes(shards[3].read_bytes())
    assert [label for _, label in ImageStream(tmp_path / "hub")] == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14]
    assert [label for _, label in ImageStream(tmp_path / "hub", split="validation")] == [15, 16, 17, 18, 19]


@pytest.mark.parametrize("layout", ["parquet", "folder"])
@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_read_disjoint_parts_that_cover_the_split(layout, world_size, parquet_dir, image_folder):
    # parquet: 4 shards -> whole shards per rank when 4 % world == 0, else every N-th example;
    # a streamed image folder is a single shard -> every N-th example
    source = parquet_dir[0] if layout == "parquet" else image_folder
    parts = [[row for row in ImageStream(source, rank=r, world_size=world_size).dataset] for r in range(world_size)]
    key = "label" if layout == "parquet" else "image"
    ids = [[str(row[key]) for row in part] for part in parts]
    everything = [str(row[key]) for row in ImageStream(source).dataset]
    assert sorted(sum(ids, [])) == sorted(everything)
    assert len(set(sum(ids, []))) == len(everything)


def test_unlabelled_dataset_and_grayscale(image_folder):
    pairs = list(ImageStream(image_folder, label_column=None, mode="L"))
    assert {label for _, label in pairs} == {0} and pairs[0][0].mode == "L"


def test_bad_sources_and_columns_raise_clear_errors(tmp_path, image_folder):
    with pytest.raises(DataError, match="does not exist"):
        ImageStream(str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="no files match"):
        ImageStream(str(tmp_path / "*.parquet"))
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="not a .parquet shard"):
        ImageStream(tmp_path / "notes.txt")
    with pytest.raises(DataError, match=r"no image column 'img'.*\['image', 'label'\]"):
        ImageStream(image_folder, image_column="img")
    with pytest.raises(DataError, match="no label column 'class'"):
        ImageStream(image_folder, label_column="class")
    with pytest.raises(DataError, match="no split 'validation'"):
        ImageStream(image_folder, split="validation")
    with pytest.raises(DataError, match="could not open someone/missing.*hf auth login"):
        ImageStream("someone/missing")  # offline in the tests: the Hub is unreachable
    with pytest.raises(MASCError, match="rank must lie"):
        ImageStream(image_folder, rank=2, world_size=2)


def test_decode_image_returns_none_for_bad_bytes():
    assert decode_image({"bytes": b"\x89PNG\r\n\x1a\n", "path": None}) is None
    assert decode_image({"bytes": None, "path": "/nonexistent.png"}) is None


def test_importing_the_namespace_is_light():
    import subprocess
    import sys

    code = "import sys, masc_hf.data; print('torch' in sys.modules, 'datasets' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split() == ["False", "False"]
