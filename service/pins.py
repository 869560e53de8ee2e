"""Pinned fits: a recommendation pins the fit it answers from, so a launcher can ask for the
same answer again (`?fit_id=`); the pin policy bounds how many are kept.

Policy (`store.queries`: KEEP_FITS, PIN_KEEP_DAYS, MAX_PINNED_FITS): a study keeps its
newest 20 fits, and besides them the pinned fits that an answer used within the last 30
days, at most 50, least recently used pruned first. Every answer from a pinned fit counts
as a use (recorded at most once an hour per process, so the hot path stays read-only). A
fit that was pruned answers 410 Gone, saying so, instead of 404.
"""

from __future__ import annotations

import time

from service.cache import LRUCache
from service.errors import FitExpired, FitNotFound
from service.fits import FitRecord, fit_by_id
from service.studies import find_study
from store import queries
from store.db import Engine, read_connection, run_in_transaction

# A use is written at most this often per fit and process: the policy counts days.
USE_RESOLUTION_SECONDS = 3600.0
_last_recorded = LRUCache(4096)


def record_use(engine: Engine, stored: FitRecord) -> None:
    """Pin the fit an answer comes from (or renew its pin), then prune to the policy; at most
    once an hour per fit in this process."""
    seen = _last_recorded.get(stored.key)
    now = time.monotonic()
    if seen is not None and now - seen < USE_RESOLUTION_SECONDS:
        return
    run_in_transaction(engine, lambda conn: queries.pin_fit(conn, stored.id))
    _last_recorded.put(stored.key, now)


def needs_recording(stored: FitRecord) -> bool:
    """Whether `record_use` would write (lets an async caller skip the thread hop)."""
    seen = _last_recorded.get(stored.key)
    return seen is None or time.monotonic() - seen >= USE_RESOLUTION_SECONDS


def fit_or_gone(engine: Engine, study_name: str, fit_id: int) -> FitRecord:
    """The study's fit `fit_id`; FitExpired (410) if pruning removed it, FitNotFound if it never was."""
    try:
        return fit_by_id(engine, study_name, fit_id)
    except FitNotFound:
        study = find_study(engine, study_name)
        with read_connection(engine) as conn:
            expired = queries.expired_fit(conn, study.id, fit_id)
        if expired is None:
            raise
        day = expired["expired_at"].date().isoformat()
        raise FitExpired(
            f"fit {fit_id} of study '{study_name}' was pruned on {day}: a study keeps its newest "
            f"{queries.KEEP_FITS} fits and, besides them, at most {queries.MAX_PINNED_FITS} pinned fits that an "
            f"answer used within the last {queries.PIN_KEEP_DAYS} days; ask without fit_id for the current fit"
        ) from None
