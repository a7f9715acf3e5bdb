"""Plots as PNG files, for the figures people would rather look at than read: training curves,
prediction entropy per position, an evaluation metric against training steps.

matplotlib is imported inside each function and drives its Agg canvas directly (no ``pyplot``): the
global backend of a caller's notebook or GUI is left alone, and no display is needed. Every file is
written to a temporary name beside ``path`` and renamed into place.

Logs are lists of ``{"step": int, <key>: float, ...}`` records, or paths of JSON files holding one:
a training run's ``history.json`` (``loss``, ``entropy``, ``entropy_normalized``, ``lr``, ...) or
its ``eval_history.json`` (``fid``, ...); see :func:`masc_hf.evaluation.load_eval_log`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_file
from ..errors import MASCError

__all__ = ["plot_entropy_per_position", "plot_metric_vs_step", "plot_training_curves"]

def plot_training_curves(
    histories: Mapping[str, Any], path: str | os.PathLike, *, keys: Sequence[str] = ("loss", "entropy_normalized")
) -> Path:
    """One panel per key of ``keys`` against the step, one line per run.

    ``histories``: ``{run name: history}``, each a list of training records or the path of a
    ``history.json`` (or of the run directory holding it). Returns ``path``.
    """
    from .acceleration import load_eval_log

    if not histories:
        raise MASCError("no training histories to plot; pass {run name: records or history.json path}")
    fig, axes = _figure(1, len(keys), width=4.5 * len(keys), height=3.4)
    for ax, key in zip(axes, keys):
        for name, history in histories.items():
            points = load_eval_log(_history_file(history), key)
            steps, values = zip(*points)
            ax.plot(steps, values, label=name, linewidth=1.5)
        ax.set_xlabel("step")
        ax.set_title(key)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    return _save(fig, path)


def plot_entropy_per_position(
    entropy: Any,
    path: str | os.PathLike,
    *,
    grid: tuple[int, int] | None = None,
    title: str = "prediction entropy (bits)",
    unit: str = "bits",
) -> Path:
    """Prediction entropy (bits) per token position: lines against the position, or heatmaps.

    ``entropy``: an array ``[L]`` (e.g. ``entropy_per_position(...).per_position``), or
    ``{name: array [L]}`` to compare models. ``grid=(h, w)`` draws one heatmap per name over the
    ``h x w`` token grid (row-major, LlamaGen's order) on a shared colour scale; without it, one line
    per name. ``unit``: the axis label (e.g. ``"normalised"`` for entropies divided by
    ``log2(V)``). Returns ``path``.
    """
    series = _named_series(entropy)
    if grid is None:
        fig, (ax,) = _figure(1, 1, width=6.0, height=3.4)
        for name, values in series.items():
            ax.plot(np.arange(values.size), values, label=name, linewidth=1.2)
        ax.set_xlabel("token position")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(series) > 1 or next(iter(series)):
            ax.legend(fontsize="small")
        return _save(fig, path)
    height, width = int(grid[0]), int(grid[1])
    for name, values in series.items():
        if values.size != height * width:
            raise MASCError(f"entropy {name!r} has {values.size} positions, which a {height}x{width} grid does not hold")
    vmin = min(float(v.min()) for v in series.values())
    vmax = max(float(v.max()) for v in series.values())
    fig, axes = _figure(1, len(series), width=3.2 * len(series) + 0.8, height=3.4, layout="constrained")
    for ax, (name, values) in zip(axes, series.items()):
        image = ax.imshow(values.reshape(height, width), vmin=vmin, vmax=vmax, cmap="viridis")
        ax.set_title(f"{name}: mean {values.mean():.3g}" if name else f"mean {values.mean():.3g}", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=list(axes), label=unit, shrink=0.85)
    fig.suptitle(title)
    return _save(fig, path, tight=False)


def plot_metric_vs_step(
    logs: Mapping[str, Any],
    metric: str,
    path: str | os.PathLike,
    *,
    reference: float | Mapping[str, float] | None = None,
    lower_is_better: bool | None = None,
) -> Path:
    """An evaluation metric (e.g. ``"fid"``) against the training step, one line per method.

    ``logs``: ``{method: log}`` or ``{method: [log, log, ...]}`` (one log per seed). With several
    logs a method's line is their mean at the steps every log has, with a band of one standard
    deviation across seeds (sample std). ``reference``: a value drawn as a dashed horizontal line
    (e.g. the real data's, or the baseline's final FID), or ``{label: value}`` for several.
    Returns ``path``.
    """
    from .acceleration import load_eval_log

    if not logs:
        raise MASCError(f"no evaluation logs to plot; pass {{method: log or [log per seed]}} with {metric!r} values")
    fig, (ax,) = _figure(1, 1, width=6.0, height=3.8)
    for name, value in logs.items():
        runs = [value] if _is_single_log(value) else list(value)
        if not runs:
            raise MASCError(f"method {name!r} has no evaluation logs")
        curves = [dict(load_eval_log(run, metric)) for run in runs]
        steps = sorted(set.intersection(*(set(curve) for curve in curves)))
        if not steps:
            raise MASCError(f"the {len(runs)} logs of {name!r} share no evaluated step; evaluate the seeds at the same steps")
        values = np.array([[curve[step] for step in steps] for curve in curves])
        mean = values.mean(axis=0)
        label = name if len(runs) == 1 else f"{name} (mean of {len(runs)} seeds ± std)"
        (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=label)
        if len(runs) > 1:
            spread = values.std(axis=0, ddof=1)
            ax.fill_between(steps, mean - spread, mean + spread, color=line.get_color(), alpha=0.2, linewidth=0)
    references = {} if reference is None else ({"reference": reference} if not isinstance(reference, Mapping) else reference)
    for label, value in references.items():
        ax.axhline(float(value), linestyle="--", color="gray", linewidth=1)
        ax.annotate(f"{label}: {float(value):.3g}", (0.01, float(value)), xycoords=("axes fraction", "data"),
                    fontsize="small", color="gray", va="bottom")
    ax.set_xlabel("step")
    ax.set_ylabel(metric + ("" if lower_is_better is None else " (lower is better)" if lower_is_better else " (higher is better)"))
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


# ---------------------------------------------------------------------------------------- helpers
def plot_rows(
    results: dict[str, dict[str, list[float]]], path: str | os.PathLike, *, metrics: tuple[str, ...] | None = None
) -> Path:
    """One panel per metric, one bar per row (mean over seeds, whiskers ± one standard deviation).

    ``results``: ``{row name: {metric: [value per seed]}}``, e.g. the rows of a table of runs.
    """
    import numpy as np

    if not results:
        raise MASCError("no rows to plot; pass {row name: {metric: [value per seed]}}")
    metrics = metrics or tuple(next(iter(results.values())))
    fig, axes = _figure(1, len(metrics), width=3.6 * len(metrics), height=3.4 + 0.12 * max(len(r) for r in results))
    names = list(results)
    for ax, metric in zip(axes, metrics):
        values = [np.asarray(results[name].get(metric, []), dtype=float) for name in names]
        means = [v.mean() if v.size else np.nan for v in values]
        spreads = [v.std(ddof=1) if v.size > 1 else 0.0 for v in values]
        ax.barh(range(len(names)), means, xerr=spreads, color="#4c72b0", alpha=0.85, capsize=3)
        ax.set_yticks(range(len(names)), names if ax is axes[0] else [""] * len(names))
        ax.invert_yaxis()
        ax.set_title(metric.replace("_", " "))
        ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def _figure(rows: int, cols: int, *, width: float, height: float, layout: str | None = None):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout=layout)
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    return fig, list(axes)


def _save(fig, path: str | os.PathLike, *, tight: bool = True) -> Path:
    """Write ``fig`` as PNG to a temporary file beside ``path``, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if tight:
        fig.tight_layout()
    with atomic_file(path) as handle:
        fig.savefig(handle, format="png")
    return path


def _history_file(history: Any) -> Any:
    """A run directory stands for its ``history.json``."""
    if isinstance(history, (str, os.PathLike)) and Path(history).is_dir():
        return Path(history) / "history.json"
    return history


def _is_single_log(value: Any) -> bool:
    if isinstance(value, (str, os.PathLike)):
        return True
    return isinstance(value, Sequence) and len(value) > 0 and isinstance(value[0], Mapping)


def _named_series(entropy: Any) -> dict[str, np.ndarray]:
    items = entropy.items() if isinstance(entropy, Mapping) else [("", entropy)]
    series = {}
    for name, values in items:
        values = np.asarray(getattr(values, "per_position", values), dtype=np.float64)
        if values.ndim != 1 or values.size == 0 or not np.isfinite(values).all():
            raise MASCError(f"entropy {name or ''!r} must be a finite 1-D array [L], got shape {list(values.shape)}")
        series[str(name)] = values
    if not series:
        raise MASCError("no entropy values to plot")
    return series
