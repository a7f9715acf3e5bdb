import json

import pytest

from masc_hf.evaluation import EvalLogError, steps_to_reach, training_acceleration

BASELINE = [{"step": 100, "fid": 40.0}, {"step": 200, "fid": 30.0}, {"step": 300, "fid": 25.0}, {"step": 400, "fid": 20.0}]


def test_a_run_that_gets_there_sooner_is_accelerated_by_the_share_of_steps_saved():
    faster = [{"step": 100, "fid": 30.0}, {"step": 200, "fid": 20.0}, {"step": 300, "fid": 15.0}, {"step": 400, "fid": 12.0}]
    result = training_acceleration(BASELINE, faster)
    assert result == {"target": 20.0, "baseline_steps": 400, "steps": 200.0, "acceleration": pytest.approx(0.5)}


def test_crossing_between_evaluations_is_interpolated():
    run = [{"step": 100, "fid": 30.0}, {"step": 200, "fid": 10.0}]
    # 30 -> 10 crosses 20 half-way between steps 100 and 200
    assert steps_to_reach(run, 20.0) == pytest.approx(150.0)
    assert training_acceleration(BASELINE, run)["acceleration"] == pytest.approx(1 - 150 / 400)


def test_a_run_that_never_gets_there_has_unknown_negative_acceleration():
    slower = [{"step": 100, "fid": 60.0}, {"step": 400, "fid": 21.0}]
    assert training_acceleration(BASELINE, slower) == {"target": 20.0, "baseline_steps": 400, "steps": None, "acceleration": None}


def test_baseline_against_itself_and_higher_is_better_metrics():
    # the baseline reaches its own final value at its last step at the latest: acceleration >= 0
    assert training_acceleration(BASELINE, BASELINE)["acceleration"] == pytest.approx(0.0)
    inception = [{"step": 10, "is": 50.0}, {"step": 20, "is": 100.0}]
    assert steps_to_reach(inception, 75.0, "is", lower_is_better=False) == pytest.approx(15.0)
    assert steps_to_reach(inception, 75.0, "is") == 10.0  # lower is better: already below at step 10


def test_logs_are_read_from_files_and_bad_logs_are_named(tmp_path):
    path = tmp_path / "eval_history.json"
    path.write_text(json.dumps(list(reversed(BASELINE))))  # order does not matter
    assert training_acceleration(path, BASELINE)["acceleration"] == pytest.approx(0.0)
    with pytest.raises(EvalLogError, match="does not exist"):
        training_acceleration(tmp_path / "missing.json", BASELINE)
    with pytest.raises(EvalLogError, match="lacks 'step' or 'fid'"):
        steps_to_reach([{"step": 1, "loss": 2.0}], 1.0)
    with pytest.raises(EvalLogError, match="nan"):
        steps_to_reach([{"step": 1, "fid": float("nan")}], 1.0)
    with pytest.raises(EvalLogError, match="no 'fid' values"):
        steps_to_reach([], 1.0)
