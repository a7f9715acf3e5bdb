"""PNG plots: training curves, entropy per position, a metric against the step (mean ± std over seeds)."""

import json

import numpy as np
import PIL.Image
import pytest

from masc_hf.errors import MASCError
from masc_hf.evaluation.plots import plot_entropy_per_position, plot_metric_vs_step, plot_training_curves


def history(scale, steps=range(10, 110, 10)):
    return [{"step": s, "loss": scale * 5 / (1 + s / 20), "entropy": 5.0, "entropy_normalized": scale * (1 - s / 400)} for s in steps]


def opened(path):
    with PIL.Image.open(path) as image:
        assert image.format == "PNG"
        return image.size, np.asarray(image.convert("RGB"))


def test_training_curves_from_records_and_run_directories(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "history.json").write_text(json.dumps(history(1.2)))
    path = plot_training_curves({"masc": history(1.0), "flat": run}, tmp_path / "plots" / "curves.png")
    size, pixels = opened(path)
    assert size == (900, 340) and pixels.std() > 0  # two panels of 4.5 x 3.4 inches at 100 dpi
    assert sorted(p.name for p in path.parent.iterdir()) == ["curves.png"]  # no temporary file left
    size, _ = opened(plot_training_curves({"masc": history(1.0)}, tmp_path / "one.png", keys=("loss",)))
    assert size == (450, 340)
    with pytest.raises(MASCError, match="lacks 'step' or 'fid'"):
        plot_training_curves({"masc": history(1.0)}, tmp_path / "bad.png", keys=("fid",))


def test_entropy_lines_and_heatmaps(tmp_path):
    rng = np.random.default_rng(0)
    entropy = {"masc": rng.random(16) * 4, "flat": rng.random(16) * 6}
    size, _ = opened(plot_entropy_per_position(entropy["masc"], tmp_path / "line.png"))
    assert size == (600, 340)
    size, pixels = opened(plot_entropy_per_position(entropy, tmp_path / "heat.png", grid=(4, 4)))
    assert size == (720, 340) and pixels.std() > 0
    with pytest.raises(MASCError, match="16 positions, which a 3x5 grid does not hold"):
        plot_entropy_per_position(entropy, tmp_path / "x.png", grid=(3, 5))
    with pytest.raises(MASCError, match="finite 1-D array"):
        plot_entropy_per_position(np.zeros((4, 4)), tmp_path / "x.png")


def test_metric_against_step_with_seeds_and_reference(tmp_path):
    masc_seeds = [[{"step": s, "fid": 30 - s / 10 + seed} for s in (100, 200, 300)] for seed in range(3)]
    eval_file = tmp_path / "eval_history.json"
    eval_file.write_text(json.dumps([{"step": s, "fid": 35 - s / 20} for s in (100, 200, 300)]))
    path = plot_metric_vs_step({"masc": masc_seeds, "flat": eval_file}, "fid", tmp_path / "fid.png",
                               reference={"flat final": 20.0}, lower_is_better=True)
    size, pixels = opened(path)
    assert size == (600, 380) and pixels.std() > 0
    opened(plot_metric_vs_step({"flat": eval_file}, "fid", tmp_path / "fid1.png", reference=20.0))
    with pytest.raises(MASCError, match="share no evaluated step"):
        plot_metric_vs_step({"masc": [[{"step": 1, "fid": 3.0}], [{"step": 2, "fid": 2.0}]]}, "fid", tmp_path / "x.png")


def test_rows_plot_one_panel_per_metric(tmp_path):
    from masc_hf.evaluation.plots import plot_rows

    rows = {"masc + random": {"fid": [40.0, 44.0], "class_consistency": [0.7, 0.72]}, "flat": {"fid": [46.0, 47.0], "class_consistency": [0.69, 0.7]}}
    path = plot_rows(rows, tmp_path / "rows.png")
    size, _ = opened(path)
    assert size[0] > size[1]  # two panels side by side
    with pytest.raises(MASCError, match="no rows"):
        plot_rows({}, tmp_path / "none.png")
