"""A run's curves as stored: the loss curve and eval metrics, each capped and downsampled.

A run may bring `loss_curve` (the contract's `[[tokens, loss], ...]`) and `curves` (further
series by name, e.g. `eval_loss`, `eval_accuracy`), each of up to `MAX_LOSS_CURVE_POINTS`
points; trackers' histories (W&B, MLflow) may be longer still. Each series is stored with at
most `MAX_STORED_CURVE_POINTS` points: a longer one keeps its first and last point, its lowest
value, and points at evenly spaced positions of the series (in the order given, so a curve
logged every k steps keeps an even spread over training). The stored row says how many points
were given (`n_points`). x is in tokens unless the run's extra says `loss_curve_x: "steps"`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from service.limits import MAX_STORED_CURVE_POINTS
from store.curves import LOSS_SERIES

__all__ = ["LOSS_SERIES", "curve_rows", "downsample", "x_unit"]


def downsample(points: Sequence[Sequence[float]], cap: int = MAX_STORED_CURVE_POINTS) -> list[list[float]]:
    """`points`, or exactly `cap` of them when there are more: the first, the last, the lowest
    value and an even spread."""
    n = len(points)
    if n <= cap:
        return [[float(x), float(y)] for x, y in points]
    lowest = int(np.argmin(np.array([float(p[1]) for p in points])))
    # cap - 1 evenly spaced positions (the first and the last among them) and the lowest value.
    chosen = sorted({*np.round(np.linspace(0, n - 1, cap - 1)).astype(int).tolist(), lowest})
    if len(chosen) < cap:  # the lowest was among them already: one more, in the widest gap
        gap = max(range(len(chosen) - 1), key=lambda i: chosen[i + 1] - chosen[i])
        chosen.insert(gap + 1, (chosen[gap] + chosen[gap + 1]) // 2)
    return [[float(points[i][0]), float(points[i][1])] for i in chosen]


def x_unit(extra: Mapping[str, Any] | None) -> str:
    """The unit of a run's curve x values: tokens (the contract's) unless extra says steps."""
    return "steps" if (extra or {}).get("loss_curve_x") == "steps" else "tokens"


def curve_rows(run: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The run_curves rows (without run and study ids) of a validated run's curves."""
    unit = x_unit(run.get("extra"))
    series: list[tuple[str, Sequence[Sequence[float]]]] = []
    if run.get("loss_curve"):
        series.append((LOSS_SERIES, run["loss_curve"]))
    series.extend((name, points) for name, points in (run.get("curves") or {}).items() if points)
    return [
        {"series": name, "x_unit": unit, "n_points": len(points), "points": downsample(points)}
        for name, points in series
        if all(math.isfinite(float(x)) and math.isfinite(float(y)) for x, y in points)
    ]
