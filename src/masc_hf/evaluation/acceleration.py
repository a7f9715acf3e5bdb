"""Training acceleration (the MASC paper's Table 1): the share of training a run saves to reach the
baseline's final FID, read from two runs' evaluation logs.

A log is a list of ``{"step": int, <metric>: float, ...}`` records, as ``train(eval_fn=...)``
writes to ``eval_history.json`` (a path to such a file also works). Steps stand in for epochs:
with the same data and batch size the ratio is the same.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

from ..errors import MASCError

__all__ = ["EvalLogError", "load_eval_log", "steps_to_reach", "training_acceleration"]


class EvalLogError(MASCError):
    """An evaluation log that cannot be read or has no usable values of the metric."""


def load_eval_log(log: str | os.PathLike | Sequence[dict[str, Any]], metric: str) -> list[tuple[int, float]]:
    """``[(step, value)]`` sorted by step, from a log (records or a JSON file of them)."""
    if isinstance(log, (str, os.PathLike)):
        path = Path(log)
        if not path.is_file():
            raise EvalLogError(f"evaluation log {path} does not exist; train with eval_fn=... to write eval_history.json")
        log = json.loads(path.read_text())
    points = []
    for record in log:
        if "step" not in record or metric not in record:
            raise EvalLogError(f"evaluation record {record!r} lacks 'step' or {metric!r}; evaluate the metric at every logged step")
        value = float(record[metric])
        if not math.isfinite(value):
            raise EvalLogError(f"{metric} at step {record['step']} is {value}; fix the evaluation before comparing runs")
        points.append((int(record["step"]), value))
    if not points:
        raise EvalLogError(f"the evaluation log has no {metric!r} values")
    return sorted(points)


def steps_to_reach(log, target: float, metric: str = "fid", *, lower_is_better: bool = True) -> float | None:
    """The first step at which ``metric`` reaches ``target``, linearly interpolated between the two
    evaluations around the crossing (``None`` if the log never reaches it)."""
    points = load_eval_log(log, metric)
    sign = 1.0 if lower_is_better else -1.0
    previous = None
    for step, value in points:
        if sign * (value - target) <= 0:
            if previous is None or previous[1] == value:
                return float(step)
            (step0, value0) = previous
            return step0 + (step - step0) * (value0 - target) / (value0 - value)
        previous = (step, value)
    return None


def training_acceleration(baseline_log, run_log, metric: str = "fid", *, lower_is_better: bool = True) -> dict[str, Any]:
    """How much sooner ``run_log`` reaches the baseline's final ``metric`` (the paper's Table 1).

    Returns ``{"target": baseline final value, "baseline_steps": its last step, "steps": steps the
    run needs (``None`` if it never gets there), "acceleration": 1 - steps / baseline_steps}``.
    ``acceleration`` is ``None`` when the run never reaches the target: it is then negative but
    unknown (the paper reports such runs, e.g. k-means, as negative acceleration).
    """
    baseline = load_eval_log(baseline_log, metric)
    baseline_steps, target = baseline[-1]
    steps = steps_to_reach(run_log, target, metric, lower_is_better=lower_is_better)
    acceleration = None if steps is None else 1.0 - steps / baseline_steps
    return {"target": target, "baseline_steps": baseline_steps, "steps": steps, "acceleration": acceleration}
