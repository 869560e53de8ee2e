"""Curves and run states of a stored fit, for the dashboard (and any client that plots).

The numbers come from `fitting.curves`, evaluated on the fit's stored engine state, so the
band a chart draws is the interval a recommendation at that point would return.
"""

from __future__ import annotations

import math
from typing import Any

from anyio import to_thread

from fitting import curves
from fitting.study_fit import MissingTarget
from service.errors import InsufficientData, InvalidTarget, field_detail
from service.fits import FitOptions, ServedFit, json_safe, latest_fit, served_fit_async
from service.pins import fit_or_gone
from service.studies import get_study
from store import runviews
from store.db import Engine, read_connection

AXES = ("learning_rate", "batch_size", "weight_decay")


async def _fit(engine: Engine, name: str, fit_id: int | str, options: FitOptions, created_by: str | None) -> ServedFit:
    """That fit (410 if pruned), or for "latest" the fit a recommendation would use now (never
    waiting on a refit, with the same warnings when runs arrived since; 404 while the study has none)."""
    if fit_id == "latest":
        await to_thread.run_sync(lambda: latest_fit(engine, name))  # none yet: 404, not a wait
        return await served_fit_async(engine, name, options=options, created_by=created_by)
    return ServedFit(await to_thread.run_sync(lambda: fit_or_gone(engine, name, int(fit_id))))


async def fit_curves(
    engine: Engine,
    name: str,
    fit_id: int | str,
    *,
    laws: list[str],
    x: str,
    points: int,
    fixed: dict[str, float | None],
    x_range: tuple[float, float] | None = None,
    options: FitOptions,
    created_by: str | None,
) -> dict[str, Any]:
    """Law curves with 90% bands along `x` (others at `fixed`, default the proxies' centre),
    prior lines, loss-law curves and per-scale bowls of one fit.

    A law the fit has none of is listed under `missing` with the fit's reason (not an error):
    the dashboard says why instead of drawing an empty box.
    """
    served = await _fit(engine, name, fit_id, options, created_by)
    out = await to_thread.run_sync(lambda: _curves(served, laws, x, points, fixed, x_range))
    return {**out, "warnings": list(served.warnings)}


def _curves(
    served: ServedFit,
    laws: list[str],
    x: str,
    points: int,
    fixed: dict[str, float | None],
    x_range: tuple[float, float] | None,
) -> dict[str, Any]:
    record = served.record
    fit = record.result
    given = {k: float(v) for k, v in fixed.items() if v is not None}
    for k, v in given.items():
        if not (math.isfinite(v) and v > 0):
            raise InvalidTarget(f"{k} must be a positive number", [field_detail(k, "must be a positive number")])
    out_laws: dict[str, Any] = {}
    missing: dict[str, str] = {}
    for axis in laws:
        if axis not in fit.laws:
            missing[axis] = fit.missing.get(axis, "no law was fitted")
            continue
        try:
            out_laws[axis] = curves.law_curve(fit, axis, x, points, given, x_range)
        except MissingTarget as e:
            raise InvalidTarget(str(e), [field_detail(e.variable, str(e))]) from e
        except curves.CurveRequestError as e:
            raise InsufficientData(f"no curve along {x}: {e}") from e
    out: dict[str, Any] = json_safe(
        {
            "fit_id": record.id,
            "data_version": str(record.data_version),
            "x_variable": x,
            "laws": out_laws,
            "missing_laws": missing,
            "loss_law": curves.loss_law_curves(fit, points, [given["n_params"]] if "n_params" in given else []),
            "bowls": curves.scale_bowls(fit, points),
        }
    )
    return out


async def fit_run_states(
    engine: Engine, name: str, fit_id: int | str, *, options: FitOptions, created_by: str | None
) -> dict[str, Any]:
    """How the fit used each of the study's runs: {run_id: state} and counts per state."""
    served = await _fit(engine, name, fit_id, options, created_by)
    record = served.record

    def states_now() -> dict[int, str]:
        with read_connection(engine) as conn:
            study = get_study(conn, name)
            # the columns a state depends on, as plain rows (no curves, no extras: a 100k-run
            # study in well under a second)
            rows = runviews.state_inputs(conn, study.id, missing_only=False)
            excluded = runviews.excluded_ids(conn, study.id)
        states = curves.run_states_of_rows(record.result, rows)
        states.update(dict.fromkeys(excluded, "excluded"))
        return states

    states = await to_thread.run_sync(states_now)
    counts = {s: 0 for s in curves.RUN_STATES}
    for s in states.values():
        counts[s] += 1
    return {
        "fit_id": record.id,
        "data_version": str(record.data_version),
        "states": {str(k): v for k, v in states.items()},
        "counts": counts,
        "warnings": list(served.warnings),
    }
