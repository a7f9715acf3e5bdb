"""extract_codes: images -> shards against a direct encoding, resume, and a 2-process accelerate run."""

import io
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

import masc_hf.vq
from masc_hf.data import CodeShardDataset, CodeShardManifest, extract_codes
from masc_hf.data.code_shards import CodeShardWriter, read_safetensors_header
from masc_hf.data.transforms import extraction_views
from masc_hf.errors import DataError
from masc_hf.vq import encode_images

REPO = Path(__file__).resolve().parents[2]


def direct_codes(vqmodel, parquet, indices, augment, image_size=8):
    """Codes of examples ``indices`` computed without the data layer's streaming or sharding."""
    import pyarrow.parquet as pq

    rows = {}
    for path in sorted(parquet.glob("*.parquet")):
        table = pq.read_table(path).to_pylist()
        rows.update({row["label"]: row["image"]["bytes"] for row in table})
    views = torch.cat([extraction_views(Image.open(io.BytesIO(rows[i])).convert("RGB"), image_size, augment) for i in indices])
    return encode_images(vqmodel, views).reshape(len(indices), -1, (image_size // 2) ** 2).numpy()


@pytest.mark.parametrize("augment", ["flip", "ten-crop"])
def test_codes_match_a_direct_encoding(vqmodel, parquet_dir, tmp_path, augment):
    parquet, good = parquet_dir
    manifest = extract_codes(parquet, vqmodel, tmp_path / "codes", image_size=8, augment=augment, batch_size=3, shard_size=6, progress=False)
    assert manifest.complete and manifest.num_examples == 18 and manifest.num_skipped == 2
    assert manifest.num_shards == 4 and manifest.grid_size == (4, 4) and manifest.num_augmentations == {"flip": 2, "ten-crop": 10}[augment]
    fingerprint = masc_hf.clustering.codebook_fingerprint(masc_hf.vq.export_codebook(vqmodel))
    assert manifest.tokenizer_fingerprint == fingerprint
    expected = direct_codes(vqmodel, parquet, good, augment)
    for view in range(manifest.num_augmentations):
        dataset = CodeShardDataset(tmp_path / "codes", augmentation=view)
        got = [dataset[i] for i in range(len(dataset))]
        assert [int(label) for _, label in got] == good
        np.testing.assert_array_equal(np.stack([ids.numpy() for ids, _ in got]), expected[:, view])


def shard_contents(path):
    """Tensors and metadata of a shard, less the stream position (resuming writes an equivalent
    position in another form; the second interruption below checks that it resumes right)."""
    header, _ = read_safetensors_header(path)
    metadata = {key: value for key, value in header["__metadata__"].items() if key != "stream_state"}
    return {name: array.tolist() for name, array in load_file(str(path)).items()}, metadata


def interrupt(out, reference, keep):
    """Make ``out`` look like a run killed after writing shards ``0..keep-1``."""
    for f in sorted(out.glob("codes-*.safetensors"))[keep:]:
        f.unlink()
    (out / "progress" / "rank-00000-of-00001.json").unlink()
    CodeShardManifest.from_dict({**reference.to_dict(), "complete": False, "shards": []}).save(out)


@pytest.mark.parametrize("position", ["saved stream state", "re-read"])
def test_resume_skips_finished_shards(vqmodel, parquet_dir, tmp_path, monkeypatch, position):
    parquet, good = parquet_dir
    out = tmp_path / "codes"
    kwargs = dict(image_size=8, augment="none", batch_size=4, shard_size=4, progress=False)
    reference = extract_codes(parquet, vqmodel, out, **kwargs)
    assert reference.num_shards == 5
    files = sorted(out.glob("codes-*.safetensors"))
    original = {f.name: shard_contents(f) for f in files}
    interrupt(out, reference, keep=2)
    if position == "re-read":  # no saved stream position: the rows of finished shards are read and dropped
        writer = CodeShardWriter(out, reference)
        tensors = load_file(str(files[1]))
        writer.write_shard(1, tensors["codes"], tensors["labels"], num_raw=4, num_skipped=0, stream_state=None)
        original[files[1].name] = shard_contents(files[1])
    stamps = {f.name: f.stat().st_mtime_ns for f in files[:2]}

    encoded = []
    real_encode = masc_hf.vq.encode_images
    monkeypatch.setattr(masc_hf.vq, "encode_images", lambda m, x: encoded.append(len(x)) or real_encode(m, x))
    resumed = extract_codes(parquet, vqmodel, out, **kwargs)
    assert sum(encoded) == len([i for i in good if i >= 8])  # only the examples of shards 2.. were encoded
    assert {f.name: f.stat().st_mtime_ns for f in files[:2]} == stamps
    assert {f.name: shard_contents(f) for f in sorted(out.glob("codes-*.safetensors"))} == original
    assert resumed.to_dict() == reference.to_dict()

    # interrupted again, after a shard written by the resumed run (its stream position)
    interrupt(out, reference, keep=3)
    encoded.clear()
    assert extract_codes(parquet, vqmodel, out, **kwargs).to_dict() == reference.to_dict()
    assert sum(encoded) == len([i for i in good if i >= 12])
    assert {f.name: shard_contents(f) for f in sorted(out.glob("codes-*.safetensors"))} == original

    encoded.clear()  # a finished directory: nothing to do
    assert extract_codes(parquet, vqmodel, out, **kwargs).complete and encoded == []
    with pytest.raises(DataError, match="image_size: 8 vs 16"):
        extract_codes(parquet, vqmodel, out, **{**kwargs, "image_size": 16})


def test_bad_arguments(vqmodel, parquet_dir, tmp_path):
    parquet, _ = parquet_dir
    with pytest.raises(DataError, match="not a multiple of the tokenizer's downsample factor 2"):
        extract_codes(parquet, vqmodel, tmp_path, image_size=9)
    with pytest.raises(DataError, match="unknown augmentation"):
        extract_codes(parquet, vqmodel, tmp_path, augment="mirror")
    with pytest.raises(DataError, match="pass both rank and world_size"):
        extract_codes(parquet, vqmodel, tmp_path, rank=1)


def test_two_processes_with_accelerate(vqmodel, make_parquet, tmp_path):
    """accelerate launch, 2 CPU processes (gloo): the ranks' shards are disjoint and cover the data."""
    good = make_parquet(tmp_path / "parquet", num_shards=4, per_shard=3, bad={4})
    vqmodel.save_pretrained(tmp_path / "vq")
    out = tmp_path / "codes"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
        "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
        str(REPO / "recipes" / "extract_codes.py"),
        "--data", str(tmp_path / "parquet"), "--vq", str(tmp_path / "vq"), "--out", str(out),
        "--image-size", "8", "--batch-size", "2", "--shard-size", "2", "--num-workers", "1", "--cpu",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    manifest = CodeShardManifest.load(out)
    assert manifest.complete and manifest.world_size == 2 and manifest.num_skipped == 1
    ranks = {rank: [] for rank in range(2)}
    dataset = CodeShardDataset(out, augmentation=0)
    position = 0
    for shard in manifest.shards:
        ranks[shard["rank"]] += [int(dataset[position + i][1]) for i in range(shard["num_examples"])]
        position += shard["num_examples"]
    assert ranks[0] and ranks[1] and not set(ranks[0]) & set(ranks[1])
    assert sorted(ranks[0] + ranks[1]) == good
    assert manifest.num_examples == len(good)
