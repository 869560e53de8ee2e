"""Stored fits as the service hands them out (`FitRecord`), each rebuilt once per process.

A fit whose stored state predates this engine (`fitting.study_fit.StaleState`) is marked
"stale" where it is met: it is never served again, and the study is refitted. A failed fit
becomes the domain error that says why (`outcome_error`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from fitting.recommend import StudyInfo
from fitting.study_fit import StaleState, StudyResult
from service.cache import LRUCache
from service.errors import DomainError, FitFailed, FitNotFound, InsufficientData
from service.studies import get_study
from store import queries
from store.db import Engine, read_connection, run_in_transaction
from store.models import Study

# What a failed fit's `error_code` means (store.models.Fit).
INSUFFICIENT_DATA = "insufficient_data"
FIT_FAILED = "fit_failed"
# How many stale fits one lookup marks before it gives up (then: no fit to serve).
_STALE_MARKS = 25


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
        contract: dict[str, Any] = json_safe(
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
        return contract


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float replaced by None (JSON cannot carry them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


class StaleFit(Exception):
    """The stored fit predates this engine; it has been marked stale (and will be refitted)."""


# Finished fits never change, so each process rebuilds a fit's engine object once. Keys hold
# the database, fit id and creation time: one process may serve (or test) several databases,
# and a recreated database reuses ids.
_fits = LRUCache(64)


def fit_key(engine: Engine, row: Mapping[str, Any]) -> tuple[str, int, int, str]:
    return (str(engine.url), row["study_id"], row["id"], str(row["created_at"]))


def _rebuilt(engine: Engine, row: Mapping[str, Any]) -> StudyResult:
    key = fit_key(engine, row)
    fit = _fits.get(key)
    if fit is None:
        with read_connection(engine) as conn:
            state = queries.fit_result(conn, row["id"])
        if state is None:
            raise StaleFit(f"fit {row['id']} has no stored result")
        try:
            fit = StudyResult.from_state(state)
        except StaleState as error:
            run_in_transaction(engine, lambda conn: queries.mark_fit_stale(conn, row["id"]))
            raise StaleFit(str(error)) from None
        _fits.put(key, fit)
    return fit


def study_info(study: Study) -> StudyInfo:
    return StudyInfo(
        parameterization=study.parameterization,
        optimizer=study.optimizer,
        base_width=study.base_width,
        base_depth=study.base_depth,
        seq_len=study.seq_len,
    )


def stored(engine: Engine, row: Mapping[str, Any], study: Study) -> FitRecord:
    """The FitRecord of a done fit's row; StaleFit if its state predates the engine."""
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
        study=study_info(study),
    )


def outcome_error(row: Mapping[str, Any]) -> DomainError:
    """The domain error of a failed fit: the data cannot support a fit (409 insufficient_data)
    or the engine failed on them (409 fit_failed); the message says why, as recorded."""
    if row.get("error_code") == FIT_FAILED:
        return FitFailed(row["error"] or "the fitting engine failed on these runs")
    return InsufficientData(row["error"] or "the study's runs do not support a fit")


def fit_by_id(engine: Engine, study_name: str, fit_id: int) -> FitRecord:
    with read_connection(engine) as conn:
        study = get_study(conn, study_name)
        row = queries.get_fit(conn, study.id, fit_id)
    if row is not None and row["status"] == "stale":
        raise FitNotFound(f"fit {fit_id} was made by an older engine and can no longer be read; ask without fit_id")
    if row is None or row["status"] != "done":
        raise FitNotFound(f"study '{study_name}' has no fit {fit_id}")
    try:
        return stored(engine, row, study)
    except StaleFit:
        raise FitNotFound(
            f"fit {fit_id} was made by an older engine and can no longer be read; ask without fit_id"
        ) from None


def newest_done(engine: Engine, study: Study) -> FitRecord | None:
    """The study's newest done fit this engine can read (stale ones are marked on the way)."""
    for _ in range(_STALE_MARKS):
        with read_connection(engine) as conn:
            row = queries.latest_done_fit(conn, study.id)
        if row is None:
            return None
        try:
            return stored(engine, row, study)
        except StaleFit:
            continue
    return None


def latest_fit(engine: Engine, study_name: str) -> FitRecord:
    with read_connection(engine) as conn:
        study = get_study(conn, study_name)
    record = newest_done(engine, study)
    if record is None:
        raise FitNotFound(f"study '{study_name}' has no fit yet: POST /v1/studies/{study_name}/fits")
    return record
