import numpy as np
import pytest
from safetensors.numpy import save_file

from masc_hf import MASCClusterMap
from masc_hf.cli import main
from masc_hf.clustering import codebook_fingerprint, l2_normalize


def test_build_map_from_llamagen_safetensors_then_inspect(llamagen_fixtures, tmp_path, capsys):
    vq = llamagen_fixtures / "vq" / "model.safetensors"
    assert main(["build-map", "--codebook", str(vq), "--k", "64", "--out", str(tmp_path / "map")]) == 0
    cmap = MASCClusterMap.from_pretrained(tmp_path / "map")
    assert (cmap.num_tokens, cmap.num_clusters, cmap.codebook_dim) == (256, 64, 8)
    from safetensors.numpy import load_file

    raw = load_file(str(vq))["quantize.embedding.weight"].astype(np.float64)
    # the map is built from the l2-normalised rows, as the tokenizer looks them up
    assert cmap.codebook_fingerprint == codebook_fingerprint(l2_normalize(raw))
    assert main(["inspect", str(tmp_path / "map")]) == 0
    out = capsys.readouterr().out
    assert "num_clusters: 64" in out and "expected_replacement_distance" in out


def test_build_map_from_npy_and_named_tensor(tmp_path):
    codebook = np.random.default_rng(0).standard_normal((50, 4))
    np.save(tmp_path / "cb.npy", codebook)
    save_file({"a": codebook, "b": codebook[:10]}, str(tmp_path / "cb.safetensors"))
    assert main(["build-map", "--codebook", str(tmp_path / "cb.npy"), "--k", "5", "--method", "kmeans", "--out", str(tmp_path / "m1")]) == 0
    assert main(["build-map", "--codebook", str(tmp_path / "cb.safetensors"), "--tensor", "a", "--k", "5", "--out", str(tmp_path / "m2")]) == 0
    m1, m2 = MASCClusterMap.from_pretrained(tmp_path / "m1"), MASCClusterMap.from_pretrained(tmp_path / "m2")
    assert m1.method == "kmeans" and m2.method == "masc"
    assert m1.codebook_fingerprint == m2.codebook_fingerprint == codebook_fingerprint(codebook)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--k", "0"], "k must be at least 1"),
        (["--k", "51"], "larger than the number of tokens N=50"),
        (["--k", "3", "--codebook-file", "missing.npy"], "does not exist"),
        (["--k", "3", "--codebook-file", "cb.safetensors"], "name the codebook with --tensor"),
        (["--k", "3", "--codebook-file", "cb.txt"], "unsupported codebook file"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, args, message):
    codebook = np.random.default_rng(0).standard_normal((50, 4))
    np.save(tmp_path / "cb.npy", codebook)
    save_file({"a": codebook, "b": codebook}, str(tmp_path / "cb.safetensors"))
    (tmp_path / "cb.txt").write_text("1 2 3")
    path = tmp_path / "cb.npy"
    if "--codebook-file" in args:
        i = args.index("--codebook-file")
        path = tmp_path / args[i + 1]
        args = args[:i] + args[i + 2 :]
    code = main(["build-map", "--codebook", str(path), *args, "--out", str(tmp_path / "out")])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_compare_prints_one_row_per_method(tmp_path, capsys):
    np.save(tmp_path / "cb.npy", np.random.default_rng(0).standard_normal((60, 4)))
    assert main(["compare", "--codebook", str(tmp_path / "cb.npy"), "--k", "6", "--methods", "masc,kmeans++,ward,random"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method"))
    assert [line.split()[0] for line in lines[header + 1 :]] == ["masc", "kmeans++", "ward", "random"]


def test_build_map_from_pt_checkpoint_and_vqmodel_dir_agree(llamagen_fixtures, tmp_path):
    """An original LlamaGen .pt, its .safetensors and its diffusers conversion give the same map."""
    import torch
    from safetensors.torch import load_file

    from masc_hf.vq.convert_llamagen import convert_llamagen_vq

    vq = llamagen_fixtures / "vq"
    torch.save({"model": load_file(str(vq / "model.safetensors"))}, tmp_path / "vq.pt")
    converted = convert_llamagen_vq(vq / "model.safetensors", tmp_path / "vq-diffusers", config=vq / "config.json")
    maps = {}
    for name, source in {"pt": tmp_path / "vq.pt", "st": vq / "model.safetensors", "dir": converted}.items():
        assert main(["build-map", "--codebook", str(source), "--k", "32", "--out", str(tmp_path / name)]) == 0
        maps[name] = MASCClusterMap.from_pretrained(tmp_path / name)
    assert maps["pt"] == maps["st"] == maps["dir"]
    assert maps["pt"].codebook_fingerprint == maps["dir"].codebook_fingerprint
