"""Arbitrary studies never crash the fitting engine: a fit either works or says what is missing.

The HTTP layer turns InsufficientData into 409 and MissingTarget into 422; any other
exception would be a 500, which no input may cause.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fitting.common import InsufficientData
from fitting.plan import suggest_runs
from fitting.recommend import MissingTarget, recommend
from fitting.runs import RunTable
from fitting.study_fit import fit_study

positive = st.floats(min_value=1e-6, max_value=1e13, allow_nan=False, allow_infinity=False)
scale = st.tuples(
    st.sampled_from([1e6, 3e7, 1e8, 4e8, 1e9]),
    st.sampled_from([1e8, 1e9, 2e10, 1e11]),
    st.one_of(st.none(), st.sampled_from([128, 256, 1024])),
    st.one_of(st.none(), st.sampled_from([2, 8, 24])),
)
run = st.fixed_dictionaries(
    {
        "scale": scale,
        "learning_rate": st.floats(min_value=1e-6, max_value=10.0),
        "batch_size": st.sampled_from([1, 8, 64, 512, 4096]),
        "weight_decay": st.sampled_from([0.0, 0.0, 1e-4, 0.01, 0.1, 1.0]),
        "final_loss": st.one_of(st.floats(min_value=0.01, max_value=20.0), st.just(2.5)),
        "status": st.sampled_from(["completed", "completed", "completed", "diverged", "failed"]),
    }
)


def table(runs: list[dict]) -> RunTable:
    records = []
    for r in runs:
        n, d, w, depth = r["scale"]
        records.append(
            {
                "n_params": n,
                "tokens": d,
                "width": w,
                "depth": depth,
                "learning_rate": r["learning_rate"],
                "batch_size": r["batch_size"],
                "weight_decay": r["weight_decay"],
                "status": r["status"],
                "final_loss": r["final_loss"] if r["status"] == "completed" else None,
                "seq_len": 2048,
            }
        )
    return RunTable.from_records(records)


@pytest.mark.slow  # ~3 s: 60 hypothesis examples, each a fit, a recommendation and a plan
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(run, min_size=0, max_size=80),
    st.one_of(st.none(), st.sampled_from([64.0, 1000.0])),
    st.sampled_from([1.0, 7e9, 1e30]),
)
def test_fit_recommend_and_plan_never_crash(runs: list[dict], batch: float | None, size: float) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        try:
            fit = fit_study(table(runs), bootstrap=8, seed=1)
        except InsufficientData as error:
            assert str(error)
            return
        document = fit.to_dict()
        assert isinstance(document["warnings"], list)
        # The API accepts any target quantity in [1, 1e30]; absurd ones may be refused
        # (ArithmeticError → 422 "too far outside") but must not crash otherwise.
        target = {"n_params": size, "tokens": 200 * size, "width": 4096, "depth": 32}
        try:
            rec = recommend(fit, target, batch_size=batch, batch_multiple=8 if batch is None else None)
        except (InsufficientData, MissingTarget) as error:
            assert str(error)
        except ArithmeticError:
            assert size != 7e9, "a realistic target overflowed"
        else:
            lr = rec.prediction.learning_rate
            if lr is None:  # a loss-law-only answer must say why there is no learning rate
                assert "learning_rate" not in fit.laws and rec.warnings
            else:
                assert 0 < lr.low <= lr.value <= lr.high < math.inf
        try:
            suggestions = suggest_runs(fit, target, 3)
        except ArithmeticError:
            assert size != 7e9, "a realistic target overflowed"
            return
        assert all(s.reason for s in suggestions)
        assert np.all(np.isfinite([s.flops for s in suggestions]))
