"""Fit and predict with whichever `fitting` package is first on the path: a worker for bench/accuracy.py.

bench/accuracy.py runs the current engine in-process and older engines (a git revision's
`fitting/`, extracted to a temporary directory) through this script in a subprocess with
PYTHONPATH pointing there, so every engine sees the same runs and targets in the same run.

Protocol: a pickled list of jobs on stdin, a pickled list of results on stdout.
  job    = {"runs": {column: ndarray}, "options": {fit_study keyword: value}, "targets": [dict],
            "batch_size": float | None}
  result = {"error": str | None, "predictions": [{"learning_rate": (value, low, high) | None,
            "batch_size": …, "weight_decay": …} | {"error": str}]}
Options an engine's `fit_study` does not accept (an older engine knows no priors) are dropped.
"""

from __future__ import annotations

import inspect
import os
import pickle
import sys
from typing import Any

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import numpy as np

AXES = ("learning_rate", "batch_size", "weight_decay")


def _interval(p: Any, axis: str) -> tuple[float, float, float] | None:
    i = getattr(p, axis, None)
    if i is None:
        return None
    return (float(i.value), float(i.low), float(i.high))


def run_jobs(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fit each job's runs with the `fitting` on the path and predict at its targets."""
    from fitting.runs import RunTable
    from fitting.study_fit import fit_study, predict

    accepted = set(inspect.signature(fit_study).parameters)
    out = []
    for job in jobs:
        cols = job["runs"]
        fields = {k: np.asarray(v) for k, v in cols.items() if k in RunTable.__dataclass_fields__}
        runs = RunTable(**fields)
        options = {k: v for k, v in job.get("options", {}).items() if k in accepted}
        try:
            fit = fit_study(runs, **options)
        except Exception as e:  # noqa: BLE001 - the bench counts any failure
            out.append({"error": f"{type(e).__name__}: {str(e)[:300]}", "predictions": []})
            continue
        preds = []
        for target in job["targets"]:
            try:
                p = predict(fit, target, job.get("batch_size"))
                preds.append({a: _interval(p, a) for a in AXES} | {"warnings": list(p.warnings)})
            except Exception as e:  # noqa: BLE001
                preds.append({"error": f"{type(e).__name__}: {str(e)[:300]}"})
        out.append({"error": None, "predictions": preds})
    return out


def main() -> None:
    jobs = pickle.load(sys.stdin.buffer)
    results = run_jobs(jobs)
    pickle.dump(results, sys.stdout.buffer)


if __name__ == "__main__":
    main()
