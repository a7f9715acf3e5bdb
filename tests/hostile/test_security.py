"""Hostile input (issue 11, section 1): pickles that run code given as Inception weights, symlinks
planted at temporary names, shard paths out of their folder, markup injected into model cards.

Each attack is real: the payload pickle runs its code under a plain ``torch.load`` (checked here),
the symlinks point at a victim file, the manifest names a readable shard outside its folder."""

import hashlib
import json
import os
from importlib import resources

import numpy as np
import PIL.Image
import pytest
import torch
import yaml

from masc_hf import MASCClusterMap, build_cluster_map
from masc_hf.cli import main
from masc_hf.errors import DataError

N, SIZE = 12, 32  # sample images for the evaluation commands


# ------------------------------------------------------------------------------ pickles that run code
class Payload:
    """Unpickled, this creates ``marker`` (the classic ``__reduce__`` to ``exec``)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


@pytest.fixture
def evil(tmp_path):
    """``(weights file, marker)``: a pickle under torch-fidelity's own file name whose unpickling
    creates ``marker``."""
    from masc_hf.evaluation.fidelity import INCEPTION_WEIGHTS_FILE

    marker = tmp_path / "pwned"
    path = tmp_path / "evil" / INCEPTION_WEIGHTS_FILE
    path.parent.mkdir()
    torch.save({"fc.weight": torch.zeros(2), "fc.bias": Payload(marker)}, path)
    torch.load(path, weights_only=False)  # the payload is live: a plain torch.load runs it
    assert marker.exists()
    marker.unlink()
    return path, marker


@pytest.fixture
def samples(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (N, SIZE, SIZE, 3), dtype=np.uint8)
    np.savez(tmp_path / "samples.npz", arr_0=images)
    return tmp_path / "samples.npz"


def test_calculate_metrics_never_unpickles_evil_weights(evil, samples):
    from masc_hf.evaluation.fidelity import INCEPTION_WEIGHTS_URL, InceptionWeightsError, calculate_metrics

    path, marker = evil
    with pytest.raises(InceptionWeightsError, match=f"{path.name}.*sha256.*{INCEPTION_WEIGHTS_URL}"):
        calculate_metrics(samples, None, inception_weights=path, fid=False, prc=False, device="cpu", progress=False, isc_splits=3)
    assert not marker.exists()


def test_a_payload_with_the_expected_hash_is_still_not_unpickled(evil, samples, monkeypatch):
    """The file-name hash is only a prefix of the sha256 (torch-fidelity publishes no full hash), so
    a payload could be ground to match it: weights_only=True must refuse it anyway."""
    from masc_hf.evaluation import fidelity

    path, marker = evil
    monkeypatch.setattr(fidelity, "INCEPTION_WEIGHTS_SHA256_PREFIX", hashlib.sha256(path.read_bytes()).hexdigest()[:8])
    with pytest.raises(fidelity.InceptionWeightsError, match="weights_only=True"):
        fidelity.calculate_metrics(samples, None, inception_weights=path, fid=False, prc=False, device="cpu", progress=False, isc_splits=3)
    with pytest.raises(fidelity.InceptionWeightsError, match="weights_only=True"):
        fidelity.save_statistics(samples, path.parent / "stats.npz", inception_weights=path, device="cpu", progress=False)
    assert not marker.exists() and not (path.parent / "stats.npz").exists()


@pytest.mark.parametrize("given_as", ["--inception-weights", "MASC_INCEPTION_WEIGHTS", "torch hub cache"])
def test_evaluate_never_unpickles_evil_weights(evil, samples, tmp_path, monkeypatch, capsys, given_as):
    from masc_hf.evaluation.fidelity import INCEPTION_WEIGHTS_ENV, INCEPTION_WEIGHTS_FILE

    path, marker = evil
    argv = ["evaluate", "--samples", str(samples), "--metrics", "is", "--device", "cpu", "--no-progress"]
    monkeypatch.delenv(INCEPTION_WEIGHTS_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    if given_as == "--inception-weights":
        argv += ["--inception-weights", str(path)]
    elif given_as == "MASC_INCEPTION_WEIGHTS":
        monkeypatch.setenv(INCEPTION_WEIGHTS_ENV, str(path))
    else:  # where torch-fidelity would find (and unpickle) a downloaded file by itself
        cached = tmp_path / "torch" / "hub" / "checkpoints" / INCEPTION_WEIGHTS_FILE
        cached.parent.mkdir(parents=True)
        os.replace(path, cached)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "sha256" in err and INCEPTION_WEIGHTS_FILE in err
    assert not marker.exists()


def test_replacement_test_never_unpickles_evil_weights(evil, tmp_path, capsys):
    from masc_hf.training.vq_trainer import VQTrainingConfig, build_vqmodel
    from masc_hf.vq import export_codebook

    path, marker = evil
    vqmodel = build_vqmodel(VQTrainingConfig(
        image_size=16, block_out_channels=(8, 8, 8), latent_channels=8, norm_num_groups=4, num_embeddings=16, embed_dim=4, seed=0
    ))
    vqmodel.save_pretrained(tmp_path / "vq")
    build_cluster_map(export_codebook(vqmodel), 8, compute_quality=False).save_pretrained(tmp_path / "map")
    np.save(tmp_path / "images.npy", np.random.default_rng(0).integers(0, 256, (4, 12, 12), dtype=np.uint8))
    argv = ["replacement-test", "--vq", str(tmp_path / "vq"), "--maps", str(tmp_path / "map"), "--images",
            str(tmp_path / "images.npy"), "--num-images", "4", "--device", "cpu", "--inception-weights", str(path)]
    assert main(argv) == 2
    assert "sha256" in capsys.readouterr().err
    assert not marker.exists()


# ------------------------------------------------------------------------------ symlinks at temporary names
def _plant(directory, target_name, victim):
    """Symlinks to ``victim`` at the names a temporary of ``target_name`` had or has: the old fixed
    ones (``.x.tmp``, ``.x.tmp-<pid>``) and one of the pattern _io uses now (which it cleans)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in (f".{target_name}.tmp", f".{target_name}.tmp-{os.getpid()}", f".{target_name}.abcdefgh.tmp"):
        (directory / name).symlink_to(victim)


def _write_grid(out):
    from masc_hf.pipelines.grid import save_image_grid

    image = PIL.Image.new("RGB", (8, 8), "red")
    return save_image_grid([image, image], rows=1, path=out / "grid.png", row_labels=["red"]), "grid.png"


def _write_npz(out):
    from masc_hf.evaluation.sampling import image_path, pack_npz

    folder = out.parent / "pngs"
    folder.mkdir()
    for i in range(3):
        PIL.Image.new("RGB", (8, 8), (i, 0, 0)).save(image_path(folder, i))
    return pack_npz(folder, out / "samples.npz"), "samples.npz"


def _shard_manifest():
    from masc_hf.data.code_shards import CodeShardManifest

    return CodeShardManifest(tokenizer_fingerprint="f" * 64, num_tokens=16, image_size=8, grid_size=(2, 2), shard_size=2)


def _write_shard(out):
    from masc_hf.data.code_shards import CodeShardWriter

    writer = CodeShardWriter(out, _shard_manifest())
    return writer.write_shard(0, np.zeros((2, 1, 4), dtype=np.int64), np.arange(2), num_raw=2), "codes-00000-of-00001-000000.safetensors"


def _write_manifest(out):
    return _shard_manifest().save(out), "manifest.json"


def _write_map(out):
    cluster_map = build_cluster_map(np.random.default_rng(0).standard_normal((16, 4)), 4, compute_quality=False)
    return cluster_map.save_pretrained(out / "map"), "map"


def _write_json(out):
    from masc_hf._io import write_text_atomic

    return write_text_atomic(out / "metrics.json", "{}\n"), "metrics.json"


@pytest.mark.parametrize(
    "write, target_name",
    [
        (_write_grid, "grid.png"),  # masc-hf sample --out
        (_write_npz, "samples.npz"),
        (_write_shard, "codes-00000-of-00001-000000.safetensors"),
        (_write_manifest, "manifest.json"),
        (_write_map, "map"),
        (_write_json, "metrics.json"),  # every --out JSON
    ],
)
def test_planted_symlinks_at_temporary_names_are_not_followed(tmp_path, write, target_name):
    victim_file = tmp_path / "victim" / "secret.txt"
    victim_file.parent.mkdir()
    victim_file.write_text("secret")
    victim_dir = tmp_path / "victim" / "dir"
    victim_dir.mkdir()
    (victim_dir / "keep.txt").write_text("keep")
    out = tmp_path / "out"
    _plant(out, target_name, victim_dir if target_name == "map" else victim_file)
    if write is _write_shard:  # the writer's manifest too
        _plant(out, "manifest.json", victim_file)
    written, name = write(out)
    assert name == target_name and written.exists() and not written.is_symlink()
    assert victim_file.read_text() == "secret"
    assert sorted(p.name for p in victim_dir.iterdir()) == ["keep.txt"] and (victim_dir / "keep.txt").read_text() == "keep"


# ------------------------------------------------------------------------------ paths from data files
@pytest.fixture
def shard_dir(tmp_path):
    """A complete code-shard directory with one shard, and a readable copy of that shard outside it."""
    from masc_hf.data.code_shards import CodeShardWriter

    directory = tmp_path / "codes"
    writer = CodeShardWriter(directory, _shard_manifest())
    writer.write_shard(0, np.ones((2, 1, 4), dtype=np.int64), np.arange(2), num_raw=2)
    writer.finish(1)
    outside = tmp_path / "elsewhere" / "shard.safetensors"
    outside.parent.mkdir()
    outside.write_bytes((directory / "codes-00000-of-00001-000000.safetensors").read_bytes())
    return directory, outside


@pytest.mark.parametrize("how", ["dotdot", "absolute", "up-and-back", "symlink", "etc-passwd", "the-folder", "not-a-string"])
def test_a_manifest_cannot_name_a_shard_outside_its_folder(shard_dir, how):
    from masc_hf.data.code_shards import CodeShardDataset

    directory, outside = shard_dir
    CodeShardDataset(directory)[0]  # the untouched directory reads
    name = {
        "dotdot": "../elsewhere/shard.safetensors",  # a real, readable shard: only the check stops it
        "absolute": str(outside),
        "up-and-back": f"../{directory.name}/../elsewhere/shard.safetensors",
        "symlink": "link.safetensors",
        "etc-passwd": "../../../../../../../../etc/passwd",
        "the-folder": ".",
        "not-a-string": 7,
    }[how]
    if how == "symlink":
        (directory / "link.safetensors").symlink_to(outside)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["shards"][0]["file"] = name
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="not inside|without a file name"):
        CodeShardDataset(directory)


# ------------------------------------------------------------------------------ model cards
HOSTILE = [
    "masc\n---\nlicense: evil\npipeline_tag: text-generation\n---\n# Owned",  # new front matter and sections
    "<script>alert(1)</script><img src=x onerror=alert(1)>",  # HTML
    "x` | injected | cell |\n| evil | row |",  # leave the code span, add table cells and rows
    "[click](javascript:alert(1)) ![i](http://evil/x.png) **b** _i_ ~~s~~ \\",  # links, images, emphasis
    "\r\n---\r\n\x00\x1b[31m\u2028",  # other line breaks and control characters
]


def _template_metadata(name):
    text = resources.files("masc_hf.model_cards").joinpath(name).read_text(encoding="utf-8")
    return yaml.safe_load(text.split("---\n")[1])


def _structure(card) -> list[str]:
    """The markdown structure of a card's body (CommonMark + GFM tables and strikethrough, as the
    Hub renders it): block and inline token types, runs of text as one."""
    markdown_it = pytest.importorskip("markdown_it")
    parser = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"])
    types = []
    for token in parser.parse(card.text):
        for kind in [token.type] + [child.type for child in token.children or []]:
            kind = "text" if kind == "text_special" else kind  # an escaped character is text
            if not (kind == "text" and types and types[-1] == "text"):
                types.append(kind)
    return types


def _check_card(card, benign, hostile_text, template):
    from huggingface_hub import ModelCard

    text = str(card)
    assert ModelCard(text).data.to_dict() == _template_metadata(template)  # the front matter is the template's
    assert text.count("\n") == str(benign).count("\n")  # no line added
    assert _structure(card) == _structure(benign)  # no heading, rule, HTML, link, code span, emphasis or cell added
    for raw in ("<script", "<img", "[click](", "[i](", "\nlicense: evil", "\x00", "\x1b"):
        assert raw not in text
    if "<script>" in hostile_text:
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text  # shown, escaped


@pytest.mark.parametrize("hostile", HOSTILE)
def test_cluster_map_card_escapes_method_source_and_quality(hostile, tmp_path):
    from huggingface_hub import ModelCard

    base = build_cluster_map(np.random.default_rng(0).standard_normal((16, 4)), 4, compute_quality=False, source_tokenizer="vq")
    benign = MASCClusterMap(base.mapping, base.tree, method="masc", codebook_fingerprint=base.codebook_fingerprint,
                            source_tokenizer="vq", quality={"figure": 1.0})
    evil = MASCClusterMap(base.mapping, base.tree, method=hostile, codebook_fingerprint=base.codebook_fingerprint,
                          source_tokenizer=hostile, quality={hostile: 1.0})
    _check_card(evil.model_card(), benign.model_card(), hostile, "cluster_map.md")
    # a downloaded config's codebook fingerprint is free text too (the map's own fingerprint is a digest)
    forged = MASCClusterMap(base.mapping, base.tree, codebook_fingerprint=hostile, source_tokenizer="vq", quality={"figure": 1.0})
    _check_card(forged.model_card(), benign.model_card(), hostile, "cluster_map.md")
    saved = evil.save_pretrained(tmp_path / "map")
    assert ModelCard.load(saved / "README.md").data.to_dict() == _template_metadata("cluster_map.md")
    loaded = MASCClusterMap.from_pretrained(saved)  # the text itself is kept, only the card escapes it
    assert loaded.method == hostile and loaded.source_tokenizer == hostile


@pytest.fixture(scope="module")
def masc_parts(llamagen_fixtures, tmp_path_factory):
    from diffusers import VQModel

    from masc_hf.models import LlamaGenForImageGeneration
    from masc_hf.models.llamagen.convert_llamagen import convert_llamagen_checkpoint, load_config_file
    from masc_hf.vq.codebook import load_codebook_from_vqmodel
    from masc_hf.vq.convert_llamagen import convert_llamagen_vq

    root = tmp_path_factory.mktemp("parts")
    vq = llamagen_fixtures / "vq"
    vq_dir = convert_llamagen_vq(vq / "model.safetensors", root / "vq", config=vq / "config.json")
    vqvae = VQModel.from_pretrained(vq_dir).eval()
    cluster_map = build_cluster_map(load_codebook_from_vqmodel(vqvae), 64, compute_quality=False)
    config = load_config_file(llamagen_fixtures / "gpt" / "config.json")
    masc_dir = convert_llamagen_checkpoint(llamagen_fixtures / "gpt" / "model.safetensors", root / "masc", config, cluster_map=cluster_map)
    return LlamaGenForImageGeneration.from_pretrained(masc_dir).eval(), vqvae, cluster_map


@pytest.mark.parametrize("hostile", HOSTILE)
def test_pipeline_card_escapes_the_map_method(masc_parts, hostile):
    from masc_hf.pipelines import MASCPipeline

    transformer, vqvae, cluster_map = masc_parts

    def pipe(method):  # the same map (same fingerprint: the method is not part of it) under another name
        renamed = MASCClusterMap(
            cluster_map.mapping, cluster_map.tree, method=method, codebook_fingerprint=cluster_map.codebook_fingerprint
        )
        return MASCPipeline(transformer=transformer, vqvae=vqvae, cluster_map=renamed)

    _check_card(pipe(hostile).model_card(), pipe("masc").model_card(), hostile, "pipeline.md")
