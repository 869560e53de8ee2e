"""How the latest fit used each run, kept in the database so that listings filter and page by it.

A run's state (`fitting.curves.run_states`: near_optimal, used, diverged, outlier, failed)
depends on the fit (its per-scale best losses and outliers) and the run's own fields; whether
it is excluded is the run's own column, read live. `ensure_states` brings the study's stored
states up to date before a listing reads them:

- the newest finished fit is the one they describe, and no run changed: nothing to do (two
  small reads; the common case);
- same fit, runs added since: only the runs without a state are computed and stored;
- a newer fit: every run's state is computed again and only the changed ones are written.

So the first listing after a new fit of a 100k-run study pays for the refresh (about a
second), and every page after it is an indexed range (`bench/runs_listing.py`). A run replaced
by a retry since the fit keeps the state the fit gave its failed attempt until the next fit.
"""

from __future__ import annotations

from typing import Any

from fitting.curves import run_states_of_rows
from service.fits import fit_by_id
from store import queries, runviews
from store.db import Connection, Engine, read_connection, run_in_transaction
from store.models import Study

__all__ = ["FIT_STATES", "ensure_states", "state_reason"]

# The states a listing may filter by ("excluded" is the run's own column).
FIT_STATES: tuple[str, ...] = (*runviews.STORED_STATES, runviews.EXCLUDED)


def ensure_states(engine: Engine, study: Study) -> int | None:
    """Bring the study's stored run states up to date; the id of the fit they describe
    (None when the study has no finished fit)."""
    with read_connection(engine) as conn:
        fit_id = queries.latest_fit_id(conn, study.id)
        mark = runviews.state_mark(conn, study.id)
        data_version = queries.get_study_by_id(conn, study.id).data_version
    if fit_id is None:
        return None
    if mark == (fit_id, data_version):
        return fit_id
    fit = fit_by_id(engine, study.name, fit_id).result
    full = mark is None or mark[0] != fit_id

    def refresh(conn: Connection) -> None:
        # The data version first: a run stored after this read is either among the inputs read
        # next or found missing by the next listing, never marked as covered without a state.
        version = queries.get_study_by_id(conn, study.id).data_version
        inputs = runviews.state_inputs(conn, study.id, missing_only=not full)
        states = run_states_of_rows(fit, inputs)
        if full:
            stored = runviews.stored_states(conn, study.id)
            changed = {run_id: state for run_id, state in states.items() if stored.get(run_id) != state}
            gone = sorted(set(stored) - set(states))
            runviews.write_states(conn, study.id, changed, remove=gone, replace=True)
        else:
            runviews.write_states(conn, study.id, states)
        runviews.set_state_mark(conn, study.id, fit_id, version)

    run_in_transaction(engine, refresh)
    return fit_id


def state_reason(run: dict[str, Any], fit_state: str | None, fit: Any | None) -> str | None:
    """Why a run has its state in the fit, in one sentence (the run page's explanation)."""
    from fitting.optima import LEFT_BASIN, NEAR_OPTIMAL

    if fit_state is None:
        return "no fit of this study yet" if fit is None else None
    if fit_state == "excluded":
        return f"excluded by a user: {run.get('excluded_reason') or 'no reason given'}; no fit uses it"
    if fit_state == "outlier":
        for outlier in getattr(fit, "outliers", ()) or ():
            if outlier.get("run_id") == run["id"]:
                return f"left out as an outlier: {outlier.get('reason')}"
        return "left out as an outlier (implausible for its scale)"
    best = None
    if fit is not None:
        for optimum in fit.optima:
            scale = optimum.scale.to_dict()
            if all(_same(scale.get(k), run.get(k)) for k in ("n_params", "tokens", "width", "depth")):
                best = optimum.loss
    loss = run.get("final_loss")
    if fit_state == "diverged":
        if run.get("status") == "diverged":
            return "the run diverged (status diverged): it only bounds the optimum from above"
        if best is not None and loss is not None:
            return (
                f"final loss {loss:.4g} is {100 * (loss / best - 1):.1f}% above its scale's best {best:.4g} "
                f"(more than {100 * LEFT_BASIN:.0f}%): treated as having left the basin"
            )
        return "treated as diverged"
    if fit_state == "near_optimal" and best is not None and loss is not None:
        return (
            f"final loss {loss:.4g} within {100 * NEAR_OPTIMAL:.2g}% of its scale's best {best:.4g}: "
            "it sets the optimum's near-optimal range"
        )
    if fit_state == "used" and best is not None and loss is not None:
        return f"used by the fit's bowl and optimum (final loss {100 * (loss / best - 1):.2f}% above its scale's best)"
    if fit_state == "failed":
        if run.get("status") == "failed":
            return "the run failed (no final loss): no fit uses it"
        return "not used: no final loss, or a scale the latest fit has no optimum for (e.g. stored since the fit)"
    return None


def _same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return float(a) == float(b)
