"""The fit an answer comes from: at once from what is stored, or (asked for) after a wait.

`served_fit_async` is what every answer that uses a fit goes through — recommendations,
suggestions, compute-optimal allocations, curves of the latest fit, and `POST .../fits`:

- by default it answers at once from the newest completed fit; if runs arrived since, the
  answer says `fitted on N of M runs; a refit is running` and a background refit is asked
  for (`service.fits.refitter`): never more than one fit behind;
- if the fit of the current runs failed (recorded once, `service.fits.compute`), it answers
  at once: from the previous good fit with a warning saying why the current one failed, or,
  with none, with the failure itself (409 `insufficient_data` or `fit_failed`); nothing is
  refitted until the runs change;
- `fresh` (and `POST .../fits`) wants a fit whose snapshot includes the runs as of the
  request: any fit of that data version *or a later one* will do, so a waiting request joins
  the fit that is running if it read enough, instead of queueing a new one behind it;
- only a study with no completed fit, or `fresh`, waits: polling from the event loop (no
  worker thread held) up to `FitOptions.wait_seconds` (HPSCALE_FIT_WAIT_SECONDS), then
  FitInProgress (503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from service.cache import commit_cache
from service.errors import FitInProgress
from service.fits.records import FitRecord, StaleFit, newest_done, outcome_error, stored
from service.fits.refitter import Refitter
from service.settings import Settings
from service.studies import get_study
from store import queries
from store.db import Connection, Engine, snapshot_connection
from store.models import Study


@dataclass(frozen=True)
class FitOptions:
    """How fits are made and waited for: the server's settings, or a request's bootstrap."""

    bootstrap: int = 200
    wait_seconds: float = 60.0  # HPSCALE_FIT_WAIT_SECONDS
    max_fit_seconds: float = 600.0  # HPSCALE_MAX_FIT_SECONDS

    @classmethod
    def of(cls, settings: Settings, bootstrap: int | None = None) -> FitOptions:
        return cls(
            bootstrap=settings.bootstrap if bootstrap is None else bootstrap,
            wait_seconds=settings.fit_wait_seconds,
            max_fit_seconds=settings.max_fit_seconds,
        )


@dataclass(frozen=True)
class ServedFit:
    """The fit an answer comes from, and what the answer must say about it."""

    record: FitRecord
    warnings: tuple[str, ...] = ()


refitter = Refitter()


@dataclass(frozen=True)
class _ServedState:
    study: Study
    wanted: int  # the data version asked about
    newest: FitRecord | None  # the newest done fit, any data version
    outcome: Mapping[str, Any] | None  # the newest outcome row (done or failed) of `wanted` or later
    outcome_fit: FitRecord | None  # that outcome's fit, when it is a done one
    runs_now: int | None  # the study's run count, when the newest fit is of older runs


# Per study: (full count, highest id, when counted). Counting a million runs takes 50-400 ms,
# and under ingest every request meets a new data version; so for 2 s after a full count
# only the runs added since are counted (an index range). An exclusion or undo within those
# 2 s shows in the next full count.
_run_counts: dict[tuple[str, int], tuple[int, int, float]] = {}
_FULL_COUNT_EVERY = 2.0


def _runs_now(engine: Engine, conn: Connection, study: Study) -> int:
    key = (str(engine.url), study.id)
    known = _run_counts.get(key)
    if known is not None and time.monotonic() - known[2] < _FULL_COUNT_EVERY:
        added, _ = queries.fit_input_count(conn, study.id, after_id=known[1])
        return known[0] + added
    count, last = queries.fit_input_count(conn, study.id)
    _run_counts[key] = (count, last, time.monotonic())
    return count


def _served_state(engine: Engine, study_name: str, wanted: int | None, bootstrap: int | None) -> _ServedState:
    for _ in range(3):  # again if a fit met on the way was of an older engine (now marked stale)
        with snapshot_connection(engine) as conn:
            study = get_study(conn, study_name)
            version = study.data_version if wanted is None else wanted
            newest_row = queries.latest_done_fit(conn, study.id)
            outcome = queries.fit_outcome(conn, study.id, version, bootstrap)
            behind = newest_row is not None and newest_row["data_version"] < study.data_version
            runs_now = _runs_now(engine, conn, study) if behind else None
        try:
            newest = None if newest_row is None else stored(engine, newest_row, study)
            outcome_fit = None
            if outcome is not None and outcome["status"] == "done":
                same = newest is not None and newest.id == outcome["id"]
                outcome_fit = newest if same else stored(engine, outcome, study)
        except StaleFit:
            continue
        return _ServedState(study, version, newest, outcome, outcome_fit, runs_now)
    newest = newest_done(engine, study)
    return _ServedState(study, version, newest, None, None, runs_now)


# Lookups in flight, per (database, question): concurrent requests of one event loop share one
# (one thread hop and one query per poll round, however many requests wait on a first fit).
_lookups: dict[tuple[Any, ...], asyncio.Future[_ServedState]] = {}


async def _served_state_async(
    engine: Engine, study_name: str, wanted: int | None, bootstrap: int | None
) -> _ServedState:
    cache = commit_cache(engine)
    key = (str(engine.url), study_name, wanted, bootstrap)
    pending = _lookups.get(key)
    if pending is not None and pending.get_loop() is asyncio.get_running_loop():
        return await asyncio.shield(pending)
    future: asyncio.Future[_ServedState] = asyncio.get_running_loop().create_future()
    _lookups[key] = future
    try:
        state = await cache.get_or_load_async(
            ("served_fit", study_name, wanted, bootstrap), lambda: _served_state(engine, study_name, wanted, bootstrap)
        )
        future.set_result(state)
        return state
    except asyncio.CancelledError:
        future.cancel()
        raise
    except BaseException as error:
        future.set_exception(error)
        future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
        raise
    finally:
        if _lookups.get(key) is future:
            del _lookups[key]


async def served_fit_async(
    engine: Engine,
    study_name: str,
    *,
    options: FitOptions,
    created_by: str | None,
    fresh: bool = False,
    exact: bool = False,
) -> ServedFit:
    """The fit to answer from (see the module docstring). `exact`: it must have exactly
    `options.bootstrap` resamples (`POST .../fits`); implies `fresh`."""
    fresh = fresh or exact
    started = time.monotonic()
    deadline = started + options.wait_seconds
    wanted: int | None = None
    delay = 0.05
    while True:
        state = await _served_state_async(engine, study_name, wanted, options.bootstrap if exact else None)
        study, wanted, outcome, newest = state.study, state.wanted, state.outcome, state.newest
        if outcome is not None and outcome["status"] == "failed":
            if fresh or newest is None:
                raise outcome_error(outcome)
            reason = outcome_error(outcome).message
            return ServedFit(
                newest,
                (
                    f"the fit of the current runs failed ({reason}); answered from fit {newest.id}, "
                    f"fitted on {newest.n_runs} of {state.runs_now} runs",
                ),
            )
        if state.outcome_fit is not None:
            return ServedFit(state.outcome_fit)
        refitter.request(
            engine,
            study.id,
            bootstrap=options.bootstrap,
            exact=exact,
            min_version=wanted,
            created_by=created_by,
            max_seconds=options.max_fit_seconds,
        )
        if newest is not None and not fresh:
            return ServedFit(newest, (f"fitted on {newest.n_runs} of {state.runs_now} runs; a refit is running",))
        failure = refitter.failure_since(str(engine.url), study.id, started)
        if failure is not None:  # not the engine's refusal (that is recorded): the database, the child
            raise FitInProgress(f"the fit this request waits for failed ({failure[:300]}); try again shortly")
        if time.monotonic() > deadline:
            what = "a fit of the runs as of this request" if newest is not None else "the study's first fit"
            raise FitInProgress(f"{what} is still being computed; try again shortly")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)


async def fit_now_async(engine: Engine, study_name: str, *, options: FitOptions, created_by: str | None) -> FitRecord:
    """`POST .../fits`: a fit of the study's runs as of now (or later) with exactly
    `options.bootstrap` resamples, made in the fitting child; waits at most `wait_seconds`."""
    served = await served_fit_async(engine, study_name, options=options, created_by=created_by, exact=True)
    return served.record


def wait_for_background_refits(timeout: float, engine: Engine | None = None) -> bool:
    """Wait until no refit runs in this process (of `engine`'s database, if given: tests,
    shutdown); whether it is idle."""
    return refitter.wait_idle(timeout, None if engine is None else str(engine.url))


def forget_database(url: str) -> None:
    """Drop what this process remembers about the database at `url` (its studies' run counts):
    for a database emptied and refilled under the same URL, whose study ids start again."""
    for key in [key for key in _run_counts if key[0] == url]:
        _run_counts.pop(key, None)


def start_background_refits() -> None:
    """Start this process's fitting child in the background (a server's start-up): the first
    fit then does not wait ~2 s for a Python process to spawn and import numpy and scipy."""
    refitter.warm()


def stop_background_refits() -> None:
    """Kill this process's fitting child (server shutdown)."""
    refitter.stop()
