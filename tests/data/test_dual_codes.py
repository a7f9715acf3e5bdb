"""Dual-codebook code shards (IAR2's tokenizer: a semantic and a detail id per position): extraction
against vq.encode_ids, resume, the dataset's items and checks, and the mix-ups that must be refused."""

import copy
import io
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.numpy import load_file

from masc_hf.clustering import codebook_fingerprint
from masc_hf.data import CodeShardDataset, CodeShardManifest, extract_codes, load_vqmodel
from masc_hf.data.code_shards import CodeShardWriter, read_safetensors_header
from masc_hf.data.transforms import extraction_views
from masc_hf.errors import DataError
from masc_hf.vq import export_codebook, tokenizer_fingerprint
from masc_hf.vq.dual_codebook import DualCodebookVQModel

REPO = Path(__file__).resolve().parents[2]
N_SEMANTIC, N_DETAIL = 16, 40_000  # the detail ids need int32, the semantic ids int16
SIZE = 8  # image side: a 4 x 4 grid at downsample factor 2
KWARGS = dict(image_size=SIZE, batch_size=3, shard_size=4, progress=False)


def tiny_dual_vq(seed=0):
    torch.manual_seed(seed)
    return DualCodebookVQModel(
        block_out_channels=(32, 32),
        down_block_types=("DownEncoderBlock2D", "AttnDownEncoderBlock2D"),
        up_block_types=("AttnUpDecoderBlock2D", "UpDecoderBlock2D"),
        layers_per_block=1,
        latent_channels=16,
        num_semantic_embeddings=N_SEMANTIC,
        num_detail_embeddings=N_DETAIL,
        vq_embed_dim=8,
        sample_size=SIZE,
    ).eval()


@pytest.fixture(scope="module")
def dual_vq():
    return tiny_dual_vq()


@pytest.fixture(scope="module")
def noisy_parquet(tmp_path_factory):
    """2 parquet shards of 5 noisy 12x10 images (example i has label i; example 6 is not an image)."""
    from datasets import Dataset, Features, Image as ImageFeature, Value

    directory = tmp_path_factory.mktemp("parquet")
    rng = np.random.default_rng(0)
    features = Features({"image": ImageFeature(), "label": Value("int64")})
    images = {}
    for shard in range(2):
        rows = {"image": [], "label": []}
        for i in range(shard * 5, shard * 5 + 5):
            if i == 6:
                data = b"not an image"
            else:
                buffer = io.BytesIO()
                Image.fromarray(rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)).save(buffer, format="PNG")
                data = images[i] = buffer.getvalue()
            rows["image"].append({"bytes": data, "path": None})
            rows["label"].append(i)
        Dataset.from_dict(rows, features=features).to_parquet(str(directory / f"train-{shard:05d}-of-00002.parquet"))
    return directory, images


def direct_ids(vq, images, augment):
    """``(semantic [n, A, L], detail [n, A, L])`` of the good images, by vq.encode_ids alone."""
    views = torch.cat([extraction_views(Image.open(io.BytesIO(data)).convert("RGB"), SIZE, augment) for data in images.values()])
    semantic, detail = vq.encode_ids(views)
    return tuple(ids.reshape(len(images), -1, (SIZE // 2) ** 2).numpy() for ids in (semantic, detail))


def shard_contents(path):
    """Tensors and metadata of a shard, less the stream position (a resumed run may record it in another form)."""
    header, _ = read_safetensors_header(path)
    metadata = {key: value for key, value in header["__metadata__"].items() if key != "stream_state"}
    return {name: (array.dtype.str, array.tolist()) for name, array in load_file(str(path)).items()}, metadata


def test_shards_hold_the_ids_of_encode_ids(dual_vq, noisy_parquet, tmp_path):
    parquet, images = noisy_parquet
    manifest = extract_codes(parquet, dual_vq, tmp_path / "codes", augment="flip", **KWARGS)
    assert manifest.complete and manifest.is_dual_codebook and manifest.num_examples == 9 and manifest.num_skipped == 1
    assert (manifest.num_tokens, manifest.num_detail_tokens) == (N_SEMANTIC, N_DETAIL)
    assert (manifest.codes_dtype, manifest.detail_codes_dtype) == ("int16", "int32")
    assert manifest.tokenizer_fingerprint == tokenizer_fingerprint(dual_vq)
    on_disk = json.loads((tmp_path / "codes" / "manifest.json").read_text())
    assert on_disk["format_version"] == 2 and on_disk["num_detail_tokens"] == N_DETAIL and on_disk["detail_codes_dtype"] == "int32"
    header, _ = read_safetensors_header(tmp_path / "codes" / manifest.shards[0]["file"])
    assert header["codes"]["dtype"] == "I16" and header["detail_ids"]["dtype"] == "I32" and header["detail_ids"]["shape"] == [4, 2, 16]

    semantic, detail = direct_ids(dual_vq, images, "flip")
    assert len(np.unique(semantic)) > 1 and len(np.unique(detail)) > 1  # the comparison below can fail
    for view in range(2):
        for mmap in (True, False):
            dataset = CodeShardDataset(tmp_path / "codes", augmentation=view, mmap=mmap)
            assert dataset.is_dual_codebook and dataset.vocab_size == N_SEMANTIC and dataset.detail_vocab_size == N_DETAIL
            items = [dataset[i] for i in range(len(dataset))]
            assert all(len(item) == 3 and item[0].dtype == item[2].dtype == torch.long for item in items)
            assert [int(label) for _, label, _ in items] == sorted(images)
            np.testing.assert_array_equal(np.stack([s.numpy() for s, _, _ in items]), semantic[:, view])
            np.testing.assert_array_equal(np.stack([d.numpy() for _, _, d in items]), detail[:, view])

    # a DataLoader batch unpacks as semantic_ids, labels, detail_ids
    batch_semantic, batch_labels, batch_detail = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4)))
    assert batch_semantic.shape == batch_detail.shape == (4, 16) and batch_labels.tolist() == sorted(images)[:4]


def interrupt(out, reference, keep):
    """Make ``out`` look like a run killed after writing shards ``0..keep-1``."""
    for f in sorted(out.glob("codes-*.safetensors"))[keep:]:
        f.unlink()
    (out / "progress" / "rank-00000-of-00001.json").unlink()
    CodeShardManifest.from_dict({**reference.to_dict(), "complete": False, "shards": []}).save(out)


def test_resume_after_an_interruption_writes_the_same_shards(dual_vq, noisy_parquet, tmp_path, monkeypatch):
    parquet, _ = noisy_parquet
    out = tmp_path / "codes"
    reference = extract_codes(parquet, dual_vq, out, augment="none", **KWARGS)
    assert reference.num_shards == 3
    original = {f.name: shard_contents(f) for f in sorted(out.glob("codes-*.safetensors"))}
    interrupt(out, reference, keep=1)

    encoded = []
    real = dual_vq.encode_ids
    monkeypatch.setattr(dual_vq, "encode_ids", lambda views: encoded.append(len(views)) or real(views))
    resumed = extract_codes(parquet, dual_vq, out, augment="none", **KWARGS)
    assert sum(encoded) == 5  # only the good images of shards 1 and 2 (4..9, less 6) were encoded
    assert resumed.to_dict() == reference.to_dict()
    assert {f.name: shard_contents(f) for f in sorted(out.glob("codes-*.safetensors"))} == original


def test_the_fingerprint_covers_both_codebooks(dual_vq, vqmodel):
    fingerprint = tokenizer_fingerprint(dual_vq)
    assert fingerprint == tokenizer_fingerprint(copy.deepcopy(dual_vq))
    assert fingerprint not in (codebook_fingerprint(dual_vq.semantic_codebook()), codebook_fingerprint(dual_vq.detail_codebook()))
    for table in ("semantic_embedding", "detail_embedding"):
        other = copy.deepcopy(dual_vq)
        with torch.no_grad():
            getattr(other.quantize, table).weight[3] += 0.5
        assert tokenizer_fingerprint(other) != fingerprint, table
    # a single-codebook VQModel keeps the fingerprint existing shards and models record
    assert tokenizer_fingerprint(vqmodel) == codebook_fingerprint(export_codebook(vqmodel))


def test_another_tokenizer_is_refused_with_both_fingerprints(dual_vq, vqmodel, noisy_parquet, tmp_path):
    parquet, _ = noisy_parquet
    single = extract_codes(parquet, vqmodel, tmp_path / "single", augment="none", **KWARGS)
    dual = extract_codes(parquet, dual_vq, tmp_path / "dual", augment="none", **KWARGS)
    assert single.format_version == 1 and "num_detail_tokens" not in json.loads((tmp_path / "single" / "manifest.json").read_text())
    single_fp, dual_fp = single.tokenizer_fingerprint, dual.tokenizer_fingerprint

    # resuming a single-codebook extraction with a dual tokenizer, and the other way round
    single_then_dual = rf"single-codebook tokenizer .*{single_fp}.* dual-codebook tokenizer .*{dual_fp}.*write to a new directory"
    with pytest.raises(DataError, match=single_then_dual):
        extract_codes(parquet, dual_vq, tmp_path / "single", augment="none", **KWARGS)
    dual_then_single = rf"dual-codebook tokenizer .*{dual_fp}.* single-codebook tokenizer .*{single_fp}.*tokenizer that wrote them"
    with pytest.raises(DataError, match=dual_then_single):
        extract_codes(parquet, vqmodel, tmp_path / "dual", augment="none", **KWARGS)
    # another dual tokenizer of the same sizes
    other = tiny_dual_vq(seed=1)
    other_fp = tokenizer_fingerprint(other)
    with pytest.raises(DataError, match=rf"{dual_fp}.*{other_fp}"):
        extract_codes(parquet, other, tmp_path / "dual", augment="none", **KWARGS)

    # a caller that expects a tokenizer
    assert len(CodeShardDataset(tmp_path / "dual", tokenizer_fingerprint=dual_fp)) == 9
    with pytest.raises(DataError, match=rf"dual-codebook tokenizer .*{dual_fp}.* but tokenizer {other_fp} was expected; extract"):
        CodeShardDataset(tmp_path / "dual", tokenizer_fingerprint=other_fp)
    with pytest.raises(DataError, match=rf"{single_fp}.* but tokenizer {dual_fp} was expected"):
        CodeShardDataset(tmp_path / "single", tokenizer_fingerprint=dual_fp)


def write_dual_set(directory, semantic, detail, num_tokens=8, num_detail_tokens=100):
    """A one-shard dual set of ``semantic``/``detail`` ids ``[n, 1, 4]`` (labels 0..n-1), written by hand."""
    manifest = CodeShardManifest(
        tokenizer_fingerprint="d" * 64, num_tokens=num_tokens, num_detail_tokens=num_detail_tokens,
        image_size=8, grid_size=(2, 2), shard_size=4,
    )  # fmt: skip
    writer = CodeShardWriter(directory, manifest)
    writer.write_shard(0, semantic, np.arange(len(semantic)), num_raw=len(semantic), detail_ids=detail)
    return writer.finish(1)


def test_ids_are_checked_against_their_own_codebook(tmp_path):
    semantic = np.array([[0, 1, 2, 3], [4, 5, 6, 7]])[:, None, :]
    detail = np.array([[10, 20, 30, 40], [50, 60, 70, 99]])[:, None, :]
    manifest = write_dual_set(tmp_path / "codes", semantic, detail)
    assert manifest.detail_codes_dtype == "int16"  # chosen from the detail codebook's size
    dataset = CodeShardDataset(tmp_path / "codes", seed=0)
    assert [t.tolist() for t in dataset[1]] == [[4, 5, 6, 7], 1, [50, 60, 70, 99]]

    dataset.manifest.num_detail_tokens = 60  # shards that no longer fit their manifest (edited or corrupt files)
    assert dataset[0][2].tolist() == [10, 20, 30, 40]
    with pytest.raises(DataError, match=r"example 1 of .* holds detail ids in \[50, 99\] but the detail codebook has 60 codes"):
        dataset[1]
    dataset.manifest.num_detail_tokens, dataset.manifest.num_tokens = 100, 6
    with pytest.raises(DataError, match=r"holds semantic ids in \[4, 7\] but the semantic codebook has 6 codes"):
        dataset[1]

    # the writer checks each id tensor against its own codebook, and the pairing of the tensors
    writer = CodeShardWriter(tmp_path / "other", CodeShardManifest.from_dict({**manifest.to_dict(), "shards": [], "complete": False}))
    with pytest.raises(DataError, match=r"detail ids must lie in \[0, 100\), got \[11, 100\]"):
        writer.write_shard(0, semantic, np.arange(2), num_raw=2, detail_ids=detail + 1)
    with pytest.raises(DataError, match=r"token ids must lie in \[0, 8\)"):
        writer.write_shard(0, semantic + 1, np.arange(2), num_raw=2, detail_ids=detail)
    with pytest.raises(DataError, match="detail_ids are required"):
        writer.write_shard(0, semantic, np.arange(2), num_raw=2)
    with pytest.raises(DataError, match=r"detail_ids must be \[n, A, L\] = \[2, 1, 4\]"):
        writer.write_shard(0, semantic, np.arange(2), num_raw=2, detail_ids=detail[:, 0])
    single = CodeShardManifest(tokenizer_fingerprint="f" * 64, num_tokens=8, image_size=8, grid_size=(2, 2), shard_size=4)
    with pytest.raises(DataError, match="detail_ids are not allowed"):
        CodeShardWriter(tmp_path / "single", single).write_shard(0, semantic, np.arange(2), num_raw=2, detail_ids=detail)
    with pytest.raises(DataError, match="int16 cannot hold token ids up to 69999"):
        CodeShardManifest.from_dict({**single.to_dict(), "num_detail_tokens": 70_000, "detail_codes_dtype": "int16"})
    with pytest.raises(DataError, match="num_detail_tokens must be a positive integer"):
        CodeShardManifest.from_dict({**single.to_dict(), "num_detail_tokens": 0})


def test_readers_of_single_ids_refuse_dual_codes(tmp_path):
    from masc_hf import build_cluster_map
    from masc_hf.training import model_for_codes
    from masc_hf.training.trainer import check_model_fits_data

    write_dual_set(tmp_path / "codes", np.zeros((2, 1, 4), int), np.zeros((2, 1, 4), int))
    dataset = CodeShardDataset(tmp_path / "codes", seed=0)
    for attempt in (
        lambda: model_for_codes(dataset, preset="GPT-B-256"),
        lambda: check_model_fits_data(None, dataset),  # the first check train() makes
    ):
        with pytest.raises(DataError, match=r"LlamaGen/MASC training reads one token id per position, but .* holds dual-codebook") as err:
            attempt()
        assert "\n" not in str(err.value)
    cluster_map = build_cluster_map(np.random.default_rng(0).normal(size=(8, 2)), 3, compute_quality=False)
    with pytest.raises(DataError, match="cluster maps over them are not supported yet"):
        CodeShardDataset(tmp_path / "codes", cluster_map=cluster_map)


def test_load_vqmodel_and_the_recipe_take_a_dual_tokenizer(dual_vq, noisy_parquet, tmp_path):
    parquet, images = noisy_parquet
    dual_vq.save_pretrained(tmp_path / "pipeline" / "vqvae")
    loaded = load_vqmodel(tmp_path / "pipeline")
    assert isinstance(loaded, DualCodebookVQModel) and not loaded.training
    assert tokenizer_fingerprint(loaded) == tokenizer_fingerprint(dual_vq)

    env = {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src"), "PATH": "/usr/bin:/bin"}
    command = [
        sys.executable, str(REPO / "recipes" / "extract_codes.py"), "--data", str(parquet), "--vq", str(tmp_path / "pipeline"),
        "--out", str(tmp_path / "codes"), "--image-size", str(SIZE), "--no-flip", "--batch-size", "4", "--num-workers", "1", "--cpu",
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    dataset = CodeShardDataset(tmp_path / "codes", tokenizer_fingerprint=tokenizer_fingerprint(dual_vq))
    semantic, detail = direct_ids(dual_vq, images, "none")
    np.testing.assert_array_equal(np.stack([dataset[i][0].numpy() for i in range(len(dataset))]), semantic[:, 0])
    np.testing.assert_array_equal(np.stack([dataset[i][2].numpy() for i in range(len(dataset))]), detail[:, 0])
