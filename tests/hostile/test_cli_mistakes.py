"""A user's mistake at the command line: one line naming the value and the fix, exit code 2, no
traceback, and before any long work (nothing is written)."""

import os

import numpy as np
import pytest

from masc_hf.cli import main


def run_cli(argv, capsys):
    """(exit code, the lines of stderr that are not logging)."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line and not line.startswith(("INFO ", "WARNING ", "DEBUG "))]
    return code, lines


@pytest.fixture(scope="module")
def work(tmp_path_factory, llamagen_fixtures):
    root = tmp_path_factory.mktemp("hostile-cli")
    np.save(root / "cb.npy", np.random.default_rng(0).normal(size=(64, 4)))
    np.save(root / "flat.npy", np.zeros(8))
    (root / "list.json").write_text("[1, 2]")
    (root / "a_file").write_text("not a directory")
    (root / "busy").mkdir()
    (root / "busy" / "notes.txt").write_text("someone else's file")
    from masc_hf.vq.convert_llamagen import convert_llamagen_vq

    convert_llamagen_vq(llamagen_fixtures / "vq" / "model.safetensors", root / "vq", config=llamagen_fixtures / "vq" / "config.json")
    assert main(["build-map", "--codebook", str(root / "vq"), "--k", "64", "--out", str(root / "map64")]) == 0
    return root


CASES = [
    # (argv with {w} for the work folder and {g} for the fixtures' gpt folder, text the message must hold)
    ("build-map --codebook {w}/cb.npy --k 8 --out /proc/masc-map", "/proc"),
    ("build-map --codebook {w}/cb.npy --k 8 --out {w}/a_file/map", "a_file"),
    ("build-map --codebook {w}/cb.npy --k 8 --out {w}/cb.npy", "is a file"),
    ("build-map --codebook {w}/cb.npy --k 8 --out {w}/busy", "notes.txt"),
    ("build-map --codebook {w}/flat.npy --k 2 --out {w}/m", "2-D"),
    ("build-map --codebook {w}/missing.npy --k 2 --out {w}/m", "missing.npy"),
    ("build-map --codebook {w}/cb.npy --k 8 --seed -1 --method kmeans --out {w}/m", "-1"),
    ("build-map --codebook {w}/cb.npy --k 8 --seed x --out {w}/m", "'x'"),
    ("build-map --codebook {w}/cb.npy --k 99 --out {w}/m", "k=99"),
    ("build-map --codebook {w}/cb.npy --k 8 --out {w}/m --push-to-hub bad!!id", "bad!!id"),
    ("build-map --codebook {w}/cb.npy --k 8 --out {w}/m --push-to-hub org/name", "HF_HUB_OFFLINE"),
    ("inspect {w}/nothing-here", "nothing-here"),
    ("convert-llamagen --checkpoint {g}/model.safetensors --config {w}/list.json --out {w}/g", "JSON list"),
    ("convert-vq --checkpoint {w}/missing.pt --out {w}/v", "missing.pt"),
    ("sample --pipeline {w}/no-pipeline --labels 1 --out {w}/x.png", "no-pipeline"),
    ("sample --pipeline org/no-such-pipeline --labels 1 --out {w}/x.png", "no-such-pipeline"),
    ("sample --pipeline {w}/no-pipeline --labels 1 --out {w}/x.xyz", ".xyz"),
    ("sample --pipeline {w}/no-pipeline --labels 1 --out {w}", "is a directory"),
    ("sample --pipeline {w}/no-pipeline --labels 1 --n 0 --out {w}/x.png", "--n"),
    ("gallery --vq {w}/vq --map {w}/map64 --out {w}/g.png --device banana", "banana"),
    ("gallery --vq {w}/vq --map {w}/map64 --out {w}/g.png --device cuda:7", "cuda:7"),
    ("gallery --vq {w}/vq --map {w}/map64 --out {w}/g.png --clusters 0", "num_clusters"),
    ("gallery --vq {w}/vq --map {w}/cb-map --out {w}/g.png", "cb-map"),
    ("replacement-test --vq {w}/vq --maps {w}/map64 --images {w}/missing.npy", "missing.npy"),
    ("replacement-test --vq {w}/vq --maps {w}/map64 --images fashion-mnist --batch-size 0", "--batch-size"),
    ("evaluate --samples {w}/none --metrics fid --out /proc/metrics.json", "/proc"),
    ("evaluate --samples {w}/none --metrics xyz", "xyz"),
    ("quickstart --out {w}/a_file/run", "a_file"),
]


@pytest.mark.parametrize("argv, named", CASES, ids=[c[0].split()[0] + ":" + c[1] for c in CASES])
def test_a_mistake_is_one_line_and_exit_code_2(work, llamagen_fixtures, capsys, monkeypatch, argv, named):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    before = sorted(os.listdir(work))
    code, lines = run_cli(argv.format(w=work, g=llamagen_fixtures / "gpt").split(), capsys)
    assert code == 2, lines
    assert len(lines) == 1 and "Traceback" not in lines[0], lines
    assert lines[0].startswith("masc-hf ") and ": error: " in lines[0] and named in lines[0], lines
    assert sorted(os.listdir(work)) == before  # refused before anything was written


def test_a_bug_still_shows_its_traceback(monkeypatch, work, capsys):
    """Only a user's mistakes are turned into one line: a programming error keeps its traceback."""
    import masc_hf.clustering

    def broken(*args, **kwargs):
        raise KeyError("internal")

    monkeypatch.setattr(masc_hf.clustering, "build_cluster_map", broken)
    with pytest.raises(KeyError):
        main(["build-map", "--codebook", str(work / "cb.npy"), "--k", "8", "--out", str(work / "never")])


@pytest.mark.parametrize(
    "script, args, named",
    [
        ("sample.py", ["--pipeline", "{w}/no-pipeline", "--out", "{w}/samples"], "no-pipeline"),
        ("sample.py", ["--pipeline", "{w}/no-pipeline", "--out", "{w}/a_file/samples"], "a_file"),
        ("extract_codes.py", ["--data", "{w}/images", "--vq", "{w}/no-vq", "--out", "{w}/codes", "--cpu"], "no-vq"),
        ("reproduce_table1.py", ["--seeds", "-1", "--workdir", "{w}/table1"], "--seeds"),
    ],
)
def test_recipes_report_a_mistake_in_one_line(work, script, args, named):
    import subprocess
    import sys
    from pathlib import Path

    recipe = Path(__file__).resolve().parents[2] / "recipes" / script
    result = subprocess.run(
        [sys.executable, str(recipe), *[a.format(w=work) for a in args]],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    lines = [line for line in result.stderr.splitlines() if line and " INFO " not in line and not line.startswith("INFO")]
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in result.stderr and named in lines[0], lines
