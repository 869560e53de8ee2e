"""Fits: computed once per (study, data_version, bootstrap), across processes.

The first request for a stale fit inserts the fit's 'running' row (unique per study,
data version and bootstrap count) and computes it; concurrent requests in any process
find that row and wait for it to finish instead of fitting again. Runs and the data
version are read in one snapshot, so a fit's `data_version` is exactly the data it saw.
Fitting runs in the request's worker thread, never on the event loop. Where a law is
fitted: `fitting.study_fit.fit_study`, called from `_compute` below with the study's
parameterization and priors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from fitting.common import InsufficientData as EngineInsufficientData
from fitting.recommend import StudyInfo
from fitting.runs import RunTable
from fitting.study_fit import StudyResult, fit_study
from service.cache import LRUCache, commit_cache
from service.errors import FitInProgress, FitNotFound, InsufficientData
from service.studies import get_study
from store import queries
from store.db import Engine, run_in_transaction, snapshot_connection
from store.models import Study, utcnow

WAIT_FOR_OTHER_FIT_SECONDS = 300.0
# A 'running' fit older than this belongs to a process that died; another may take it over.
STALE_RUNNING_FIT = timedelta(minutes=10)
FIT_SEED = 20250101


@dataclass(frozen=True)
class FitRecord:
    """A finished fit as stored: its row's bookkeeping and the engine's result."""

    id: int
    study_id: int
    data_version: int
    bootstrap: int
    n_runs: int
    created_at: Any
    created_by: str | None
    result: StudyResult
    study: StudyInfo
    key: tuple[str, int, int, str]  # identifies this fit across databases (see fit_key)

    def to_contract(self) -> dict[str, Any]:
        """The contract's fit object; JSON has no NaN, so unknown numbers become null."""
        return json_safe(
            {
                "id": self.id,
                "created_at": self.created_at,
                "created_by": self.created_by,
                "n_runs": self.n_runs,
                "data_version": str(self.data_version),
                "bootstrap": self.bootstrap,
                **self.result.to_dict(),
            }
        )


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON cannot carry them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


# Finished fits never change, so each process rebuilds a fit's engine object once. Keys hold
# the database, fit id and creation time: one process may serve (or test) several databases,
# and a recreated database reuses ids.
_fits = LRUCache(64)


def fit_key(engine: Engine, row: Mapping[str, Any]) -> tuple[str, int, int, str]:
    return (str(engine.url), row["study_id"], row["id"], str(row["created_at"]))


def _rebuilt(engine: Engine, row: dict[str, Any]) -> StudyResult:
    key = fit_key(engine, row)
    fit = _fits.get(key)
    if fit is None:
        with engine.connect() as conn, conn.begin():
            state = queries.fit_result(conn, row["id"])
        assert state is not None, "a finished fit has a result"
        fit = StudyResult.from_state(state)
        _fits.put(key, fit)
    return fit


def _study_info(study: Study) -> StudyInfo:
    return StudyInfo(
        parameterization=study.parameterization,
        optimizer=study.optimizer,
        base_width=study.base_width,
        base_depth=study.base_depth,
        seq_len=study.seq_len,
    )


def _stored(engine: Engine, row: dict[str, Any], study: Study) -> FitRecord:
    return FitRecord(
        id=row["id"],
        study_id=row["study_id"],
        data_version=row["data_version"],
        bootstrap=row["bootstrap"],
        n_runs=row["n_runs"],
        created_at=row["created_at"],
        created_by=row["created_by"],
        result=_rebuilt(engine, row),
        key=fit_key(engine, row),
        study=_study_info(study),
    )


def _snapshot(engine: Engine, study_id: int) -> tuple[Study, RunTable]:
    """The study (its data version) and its runs, read in one consistent snapshot.

    Each record carries the run's `id` and `run_key`, so a fit can name the runs it leaves out.
    """
    with snapshot_connection(engine) as conn:
        study = queries.get_study_by_id(conn, study_id)
        records = queries.fit_inputs(conn, study_id)
    return study, RunTable.from_records(records, default_seq_len=study.seq_len)


def _compute(engine: Engine, study: Study, fit_id: int, claimed_version: int, bootstrap: int) -> None:
    """Compute and store the claimed fit; drop the claim if the data moved on meanwhile."""
    current, table = _snapshot(engine, study.id)
    if current.data_version != claimed_version:
        run_in_transaction(engine, lambda conn: queries.delete_fit(conn, fit_id))
        return
    try:
        result = fit_study(
            table,
            bootstrap=bootstrap,
            seed=FIT_SEED,
            seq_len=current.seq_len,
            parameterization=current.parameterization,
            optimizer=current.optimizer,
            priors=current.priors,
        )
    except EngineInsufficientData as error:
        reason = str(error)
        run_in_transaction(
            engine,
            lambda conn: queries.finish_fit(
                conn, fit_id, status="failed", n_runs=len(table), result=None, error=reason
            ),
        )
        return
    except BaseException:
        # Let the next request try again rather than wait on a fit that will never finish.
        run_in_transaction(engine, lambda conn: queries.delete_fit(conn, fit_id))
        raise
    state = result.to_state()
    run_in_transaction(
        engine,
        lambda conn: queries.finish_fit(conn, fit_id, status="done", n_runs=len(table), result=state, error=None),
    )


def current_fit(
    engine: Engine, study_name: str, *, bootstrap: int, created_by: str | None, any_bootstrap: bool = False
) -> FitRecord:
    """The fit of the study's current data (computing it, once across processes, if needed).

    With `any_bootstrap`, a finished fit of the current data with any bootstrap count will do
    (what a recommendation wants); otherwise the fit must have exactly `bootstrap` resamples.
    Until anything is committed to the database the answer cannot change, so it is reused.
    """
    return commit_cache(engine).get_or_load(
        *_current_fit_lookup(engine, study_name, bootstrap, created_by, any_bootstrap)
    )


async def current_fit_async(
    engine: Engine, study_name: str, *, bootstrap: int, created_by: str | None, any_bootstrap: bool = False
) -> FitRecord:
    """`current_fit` from the event loop: a cached answer without a thread hop."""
    return await commit_cache(engine).get_or_load_async(
        *_current_fit_lookup(engine, study_name, bootstrap, created_by, any_bootstrap)
    )


def _current_fit_lookup(
    engine: Engine, study_name: str, bootstrap: int, created_by: str | None, any_bootstrap: bool
) -> tuple[Hashable, Callable[[], FitRecord]]:
    """The commit-cache key of a current-fit question and the function that answers it."""
    return (
        ("current_fit", study_name, bootstrap, any_bootstrap),
        lambda: _current_fit(
            engine, study_name, bootstrap=bootstrap, created_by=created_by, any_bootstrap=any_bootstrap
        ),
    )


def _current_fit(
    engine: Engine, study_name: str, *, bootstrap: int, created_by: str | None, any_bootstrap: bool
) -> FitRecord:
    deadline = time.monotonic() + WAIT_FOR_OTHER_FIT_SECONDS
    delay = 0.02
    while True:
        with engine.connect() as conn, conn.begin():
            study = get_study(conn, study_name)
            row = (
                queries.latest_done_fit(conn, study.id, study.data_version) if any_bootstrap else None
            ) or queries.fit_for_version(conn, study.id, study.data_version, bootstrap)
        if row is not None and row["status"] == "done":
            return _stored(engine, row, study)
        if row is not None and row["status"] == "failed":
            raise InsufficientData(row["error"] or "the study's runs do not support a fit")
        if row is None:
            fit_id = run_in_transaction(
                engine,
                lambda conn: queries.claim_fit(conn, study.id, study.data_version, bootstrap, created_by),
            )
            if fit_id is not None:
                _compute(engine, study, fit_id, study.data_version, bootstrap)
            continue  # read the finished (or competing) row back
        # Another request is computing it: wait, or take over if its process died.
        started_before = utcnow() - STALE_RUNNING_FIT
        if row["created_at"] < started_before and run_in_transaction(
            engine, lambda conn: queries.take_over_stale_fit(conn, row["id"], started_before, created_by)
        ):
            _compute(engine, study, row["id"], study.data_version, bootstrap)
            continue
        if time.monotonic() > deadline:
            raise FitInProgress("another request is still computing this fit; try again")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)


def fit_by_id(engine: Engine, study_name: str, fit_id: int) -> FitRecord:
    with engine.connect() as conn, conn.begin():
        study = get_study(conn, study_name)
        row = queries.get_fit(conn, study.id, fit_id)
    if row is None or row["status"] != "done":
        raise FitNotFound(f"study '{study_name}' has no fit {fit_id}")
    return _stored(engine, row, study)


def latest_fit(engine: Engine, study_name: str) -> FitRecord:
    with engine.connect() as conn, conn.begin():
        study = get_study(conn, study_name)
        row = queries.latest_done_fit(conn, study.id)
    if row is None:
        raise FitNotFound(f"study '{study_name}' has no fit yet: POST /v1/studies/{study_name}/fits")
    return _stored(engine, row, study)
