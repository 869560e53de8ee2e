"""Small shared types for the fitting modules: intervals, scale keys, named shortfalls."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import numpy.typing as npt

from fitting.published import FLOPS_PER_PARAM_TOKEN

# The arrays the fitting modules pass around: float64 vectors and matrices.
FloatArray = npt.NDArray[np.float64]

# Every interval the service reports is a central 90% interval; Z90 is its normal quantile.
LEVEL = 0.90
Z90 = NormalDist().inv_cdf(0.5 + LEVEL / 2)
_TAIL = 100 * (1 - LEVEL) / 2

AXES: tuple[str, ...] = ("learning_rate", "batch_size", "weight_decay")
AXIS_LABEL = {"learning_rate": "learning rate", "batch_size": "batch size", "weight_decay": "weight decay"}
# The scale variables a law may use: size, data, shape (width, depth and their ratio, the aspect
# width/depth) and training compute 6·N·D.
SCALE_VARS: tuple[str, ...] = ("n_params", "tokens", "width", "depth", "aspect", "compute")


class InsufficientData(ValueError):
    """The data cannot identify what was asked; the message names what is missing.

    `missing`, when given, is a short phrase of what would make it identifiable
    (e.g. "runs at a second value of tokens").
    """

    def __init__(self, message: str, missing: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing


@dataclass(frozen=True)
class Interval:
    """A point estimate with a central 90% interval, low ≤ value ≤ high."""

    value: float
    low: float
    high: float

    def __post_init__(self) -> None:
        if not (self.low <= self.value <= self.high):
            raise ValueError(f"interval not ordered: {self.low} ≤ {self.value} ≤ {self.high}")

    def to_dict(self) -> dict[str, float]:
        return {"value": float(self.value), "low": float(self.low), "high": float(self.high)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Interval:
        return cls(float(d["value"]), float(d["low"]), float(d["high"]))

    @classmethod
    def from_samples(cls, value: float, samples: np.ndarray) -> Interval:
        """Percentile interval of `samples`, widened to contain `value` if a skewed bootstrap misses it."""
        s = np.asarray(samples, dtype=float)
        s = s[np.isfinite(s)]
        if s.size == 0:
            return cls(float(value), float(value), float(value))
        lo, hi = np.percentile(s, [_TAIL, 100 - _TAIL])
        return cls(float(value), float(min(lo, value)), float(max(hi, value)))

    @classmethod
    def exp_of(cls, log_value: float, log_samples: np.ndarray) -> Interval:
        """Interval of exp(x) from a log-space point estimate and log-space samples."""
        i = cls.from_samples(log_value, log_samples)
        return cls(math.exp(i.value), math.exp(i.low), math.exp(i.high))

    def contains(self, x: float) -> bool:
        return self.low <= x <= self.high


def percentile_bounds(samples: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Central 90% percentile bounds along `axis`, ignoring NaN."""
    return (np.nanpercentile(samples, _TAIL, axis=axis), np.nanpercentile(samples, 100 - _TAIL, axis=axis))


def scale_variables(n_params: float, tokens: float, width: float, depth: float) -> dict[str, float]:
    """The candidate law variables of one scale (aspect = width/depth, compute = 6·N·D); NaN when unknown."""
    return {
        "n_params": float(n_params),
        "tokens": float(tokens),
        "width": float(width),
        "depth": float(depth),
        "aspect": float(width) / float(depth) if float(depth) > 0 else math.nan,
        "compute": FLOPS_PER_PARAM_TOKEN * float(n_params) * float(tokens),
    }


def distinct_logs(x: np.ndarray, rel_tol: float = 0.01) -> np.ndarray:
    """Sorted logs of the positive finite `x`, each more than `rel_tol` (log) above the previous
    one kept; the largest value is kept too, so the result spans the values' whole range.

    Merged greedily from the last value *kept*, not from each neighbour: a dense random sweep
    (12,500 learning rates over 3 decades, gaps of 0.0006) has hundreds of distinct values, not
    the 2 a chain of small gaps would leave (whose ends then lay inside the sweep). Each step
    jumps to the next kept value by bisection, so the cost follows the values kept, not the runs.
    """
    u = np.unique(np.log(x[np.isfinite(x) & (x > 0)]))
    if u.size < 2 or np.all(np.diff(u) > rel_tol):  # a grid (replicates are equal): nothing to merge
        return u
    kept = [float(u[0])]
    last = 0  # position of the last value kept
    while True:
        # The first value more than rel_tol above the last kept: bisection, then the exact test
        # (k + rel_tol may round either way).
        i = max(int(np.searchsorted(u, kept[-1] + rel_tol, side="right")), last + 1)
        while i - 1 > last and u[i - 1] - kept[-1] > rel_tol:
            i -= 1
        while i < u.size and not u[i] - kept[-1] > rel_tol:
            i += 1
        if i >= u.size:
            break
        kept.append(float(u[i]))
        last = i
    if u[-1] > kept[-1]:
        kept[-1] = float(u[-1])  # the last group is represented by the sweep's end
    return np.array(kept)


def unique_rows(key: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, inverse, counts) of the distinct rows of a 2-D array, exactly as
    `np.unique(key, axis=0, return_index=True, return_inverse=True, return_counts=True)` gives
    them (rows in lexicographic order), from one 1-D sort per column and one of the combined
    integer code: sorting a million rows as records took 1.4 s, this a few tenths."""
    n = key.shape[0]
    if n == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty, empty
    code = np.zeros(n, dtype=np.int64)
    size = 1
    for j in range(key.shape[1]):
        _, column = np.unique(key[:, j], return_inverse=True)
        m = int(column.max()) + 1
        if size * m >= 2**62:  # re-rank before the mixed-radix code could overflow
            _, code = np.unique(code, return_inverse=True)
            size = int(code.max()) + 1
        code = code * m + column.ravel()
        size *= m
    _, first, inverse, counts = np.unique(code, return_index=True, return_inverse=True, return_counts=True)
    return first, inverse.ravel(), counts


def spans_two_values(x: np.ndarray, rel_tol: float = 0.01) -> bool:
    """Whether `distinct_log_values(x, rel_tol) >= 2`, from the range alone (no sort): the greedy
    merge keeps a second value exactly when the largest log lies more than `rel_tol` above the smallest."""
    v = x[np.isfinite(x) & (x > 0)]
    return v.size >= 2 and float(np.log(v.max()) - np.log(v.min())) > rel_tol


def distinct_log_values(x: np.ndarray, rel_tol: float = 0.01) -> int:
    """Number of values of positive `x` that differ by more than `rel_tol` in log space (`distinct_logs`)."""
    return int(distinct_logs(x, rel_tol).size)
