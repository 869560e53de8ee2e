"""Fits: computed once per (study, data_version, bootstrap), across processes; answers never wait.

A fit is claimed by inserting its 'running' row (unique per study, data version and
bootstrap count); the claim is a lease: its owner renews the row's `created_at` every
`HEARTBEAT_SECONDS` while it computes, and a 'running' row not renewed for `LEASE_SECONDS`
belongs to a dead process and is taken over. A fit whose computation or final write fails
releases its claim at once (its row is deleted; if even that fails, the lease runs out).

Recommendations never wait on a fit (`served_fit_async`): they get the newest completed fit
at once, with a warning when runs arrived since, and ask this process's refitter for a
background refit. The refitter keeps at most one refit running and one queued per study in
a process, and claims only when no live claim of the study exists in any process, so a
stream of batches costs one refit at a time. Only a study with no completed fit (or a
caller asking `fresh=true`) waits, polling from the event loop (no worker thread held) up to
a deadline, then 503 + Retry-After. `POST .../fits` (`current_fit`) keeps computing the fit
of the current data in its request thread. Runs and the data version are read in one
snapshot, so a fit's `data_version` is exactly the data it saw. Where a law is fitted:
`fitting.study_fit.fit_study`, called from `_compute` below.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np

from fitting.common import InsufficientData as EngineInsufficientData
from fitting.recommend import StudyInfo
from fitting.runs import COMPLETED, RunTable
from fitting.study_fit import StudyResult
from service.cache import LRUCache, commit_cache
from service.errors import FitInProgress, FitNotFound, InsufficientData
from service.metrics import counted_fit
from service.studies import get_study
from store import queries
from store.db import Engine, engine_url, make_engine, run_in_transaction, snapshot_connection
from store.models import Study, utcnow

WAIT_FOR_OTHER_FIT_SECONDS = 300.0
# The owner of a 'running' fit renews its claim this often; a claim not renewed for
# LEASE_SECONDS belongs to a process that died (or lost its database) and is taken over.
HEARTBEAT_SECONDS = 2.0
LEASE_SECONDS = 10.0
STALE_RUNNING_FIT = timedelta(seconds=LEASE_SECONDS)
# How long a request with no completed fit to serve (or asking fresh=true) waits by default.
FIRST_FIT_WAIT_SECONDS = 60.0
FIT_SEED = 20250101

log = logging.getLogger("hpscale")


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
        table = _run_table(queries.fit_input_chunks(conn, study_id), study.seq_len)
    return study, table


_FLOAT_DEFAULTS = {"seq_len": math.nan, "weight_decay": 0.0}


def _run_table(chunks: Iterable[list[tuple[Any, ...]]], default_seq_len: float | None) -> RunTable:
    """`RunTable.from_records` of row tuples (`queries.FIT_INPUT_COLUMNS`), built chunk by chunk
    into numpy columns: no per-run dict ever exists (a million of them took over a GB)."""
    names = queries.FIT_INPUT_COLUMNS
    parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
    defaults = {**_FLOAT_DEFAULTS, "seq_len": math.nan if default_seq_len is None else float(default_seq_len)}
    statuses: dict[str, str] = {}  # one string object per distinct status
    for rows in chunks:
        for name, values in zip(names, zip(*rows)):
            if name == "status":
                column = [statuses.setdefault(v, v) if v else COMPLETED for v in values]
                parts[name].append(np.array(column, dtype=object))
            elif name == "run_key":
                parts[name].append(np.array([None if v is None else str(v) for v in values], dtype=object))
            else:
                default = defaults.get(name, math.nan)
                parts[name].append(np.array([default if v is None else float(v) for v in values], dtype=float))
    columns = {
        name: np.concatenate(chunks_)
        if chunks_
        else np.zeros(0, dtype=object if name in ("status", "run_key") else float)
        for name, chunks_ in parts.items()
    }
    return RunTable(
        n_params=columns["n_params"],
        tokens=columns["tokens"],
        width=columns["width"],
        depth=columns["depth"],
        seq_len=columns["seq_len"],
        learning_rate=columns["learning_rate"],
        batch_size=columns["batch_size"],
        weight_decay=columns["weight_decay"],
        final_loss=columns["final_loss"],
        status=columns["status"],
        run_id=columns["id"],
        run_key=columns["run_key"],
    )


class _Heartbeat:
    """Renews a running fit's lease from a daemon thread while the owner computes it."""

    def __init__(self, engine: Engine, fit_id: int) -> None:
        self._engine = engine
        self._fit_id = fit_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"hpscale-fit-{fit_id}-heartbeat", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                run_in_transaction(self._engine, lambda conn: queries.heartbeat_fit(conn, self._fit_id), attempts=2)
            except Exception:
                log.warning("fit %s: heartbeat failed", self._fit_id, exc_info=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _release(engine: Engine, fit_id: int) -> None:
    """Drop a claim whose fit will not be finished, so the next request may fit again at once.

    If even that fails (the database is down), the claim's lease runs out instead.
    """
    try:
        run_in_transaction(engine, lambda conn: queries.delete_fit(conn, fit_id), attempts=3)
    except Exception:
        log.warning("fit %s: could not release the claim; it expires in %ss", fit_id, LEASE_SECONDS, exc_info=True)


def _compute(engine: Engine, study: Study, fit_id: int, claimed_version: int, bootstrap: int) -> None:
    """Compute and store the claimed fit; drop the claim if the data moved on meanwhile.

    Everything after the claim, the final write included, is inside the `try`: whatever
    fails, the claim is released (or, failing that, expires) rather than left 'running'.
    """
    try:
        with _Heartbeat(engine, fit_id):
            current, table = _snapshot(engine, study.id)
            n_runs = len(table)
            if current.data_version != claimed_version:
                _release(engine, fit_id)
                return
            try:
                result = counted_fit(  # fit_study, counted and timed for /metrics
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
                        conn, fit_id, status="failed", n_runs=n_runs, result=None, error=reason
                    ),
                )
                return
            state = result.to_state()
            del table, result  # the fit's inputs need not outlive it while the result is written
            run_in_transaction(
                engine,
                lambda conn: queries.finish_fit(conn, fit_id, status="done", n_runs=n_runs, result=state, error=None),
            )
    except BaseException:
        _release(engine, fit_id)
        raise


def _lease_expired(row: Mapping[str, Any]) -> bool:
    return bool(row["created_at"] < utcnow() - STALE_RUNNING_FIT)


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
        # Another request is computing it: wait, or take over if its owner stopped renewing it.
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


# --- answers that never wait on a fit ----------------------------------------------------


@dataclass(frozen=True)
class ServedFit:
    """The fit a recommendation is answered from, and what the answer must say about it."""

    record: FitRecord
    warnings: tuple[str, ...] = ()


class _Refitter:
    """Background refits of this process: per study at most one running and one queued.

    A request for a study whose refit is running only marks it queued; when the running one
    ends, the queued one runs (once, on whatever the data are then). Each refit runs in its
    own daemon thread, never in the server's worker threads.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: dict[tuple[str, int], str] = {}  # "running" | "queued"
        self._idle = threading.Condition(self._lock)

    def request(self, engine: Engine, study_id: int, bootstrap: int, created_by: str | None) -> None:
        key = (str(engine.url), study_id)
        with self._lock:
            if key in self._state:
                self._state[key] = "queued"
                return
            self._state[key] = "running"
        thread = threading.Thread(
            target=self._loop, args=(engine, key, bootstrap, created_by), name=f"hpscale-refit-{study_id}", daemon=True
        )
        thread.start()

    def _loop(self, engine: Engine, key: tuple[str, int], bootstrap: int, created_by: str | None) -> None:
        while True:
            try:
                _refit_elsewhere(engine, key[1], bootstrap, created_by)
            except Exception:
                log.warning("background refit of study %s failed", key[1], exc_info=True)
                time.sleep(1.0)  # do not hammer a database that just failed
            with self._lock:
                if self._state.get(key) == "queued":
                    self._state[key] = "running"
                    continue
                self._state.pop(key, None)
                self._idle.notify_all()
                return

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no refit runs in this process (tests, shutdown); whether it is idle."""
        with self._lock:
            return self._idle.wait_for(lambda: not self._state, timeout)


_refitter = _Refitter()
wait_for_background_refits = _refitter.wait_idle


# Background refits run in one child process per server process: a fit is seconds of
# Python-level numerics, and in a thread of the server it would hold the GIL against the
# event loop (a recommendation p99 of 440 ms during a 100k-run refit). The child opens the
# same database by URL; its claim's heartbeat dies with it, so a killed child's fit is taken
# over when its lease runs out. Tests or embedders may set this to False to fit in a thread.
REFIT_IN_CHILD_PROCESS = True
_child_engines: dict[str, Engine] = {}


def _refit_in_child(url: str, study_id: int, bootstrap: int, created_by: str | None) -> None:
    engine = _child_engines.get(url)
    if engine is None:
        while len(_child_engines) >= 4:  # one server's databases; tests make many
            _child_engines.pop(next(iter(_child_engines))).dispose()
        engine = _child_engines[url] = make_engine(url, pool_size=2)
    _refit_once(engine, study_id, bootstrap, created_by)


def _exit_with_parent(parent: int) -> None:
    """In the refit child: exit within a second of the server process that started it
    (its fit's lease then runs out and another process takes the fit over)."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="hpscale-parent-watch", daemon=True).start()


class _RefitChild:
    """The refit child process of this server process: started on first use, replaced if it died."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None

    def stop(self) -> None:
        """Kill the child now (server shutdown): a running fit is not waited for; its claim's
        lease runs out and whichever process asks next fits again."""
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            for process in list(getattr(pool, "_processes", {}).values()):  # no public handle
                process.kill()
            pool.shutdown(wait=False, cancel_futures=True)

    def run(self, engine: Engine, study_id: int, bootstrap: int, created_by: str | None) -> None:
        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(
                    max_workers=1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=_exit_with_parent,
                    initargs=(os.getpid(),),
                )
            pool = self._pool
        try:
            pool.submit(_refit_in_child, engine_url(engine), study_id, bootstrap, created_by).result()
        except BrokenProcessPool:
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            raise


_refit_child = _RefitChild()
stop_background_refits = _refit_child.stop


def _refit_elsewhere(engine: Engine, study_id: int, bootstrap: int, created_by: str | None) -> None:
    """`_refit_once` in the refit child process (in this thread for in-memory databases)."""
    if not REFIT_IN_CHILD_PROCESS or str(engine.url).endswith(":memory:"):
        _refit_once(engine, study_id, bootstrap, created_by)
    else:
        _refit_child.run(engine, study_id, bootstrap, created_by)


def _refit_once(engine: Engine, study_id: int, bootstrap: int, created_by: str | None) -> None:
    """Fit the study's current data unless it is fitted already or a live claim exists anywhere."""

    def claim(conn: Any) -> tuple[Study, int | None]:
        study = queries.get_study_by_id(conn, study_id)
        row = queries.fit_of_version(conn, study_id, study.data_version)
        if row is not None and row["status"] != "running":
            return study, None  # done (or refused) already
        running = queries.running_fit(conn, study_id)
        if running is not None:
            if not _lease_expired(running):
                return study, None  # one refit at a time per study, across processes
            if running["data_version"] == study.data_version and running["bootstrap"] == bootstrap:
                started_before = utcnow() - STALE_RUNNING_FIT
                taken = queries.take_over_stale_fit(conn, running["id"], started_before, created_by)
                return study, running["id"] if taken else None
            queries.delete_fit(conn, running["id"])  # a dead claim on older data: drop it
        return study, queries.claim_fit(conn, study_id, study.data_version, bootstrap, created_by)

    study, fit_id = run_in_transaction(engine, claim)
    if fit_id is not None:
        _compute(engine, study, fit_id, study.data_version, bootstrap)


@dataclass(frozen=True)
class _ServedState:
    study: Study
    newest: FitRecord | None  # the newest completed fit, any data version
    current: dict[str, Any] | None  # a fit row of the current data version, if any
    runs_now: int | None  # the study's run count, when the newest fit is stale


# Per study: (full count, highest id, when counted). Counting a million runs takes 50-400 ms,
# and under ingest every request meets a new data version; so for 2 s after a full count
# only the runs added since are counted (an index range). An exclusion or undo within those
# 2 s shows in the next full count.
_run_counts: dict[tuple[str, int], tuple[int, int, float]] = {}
_FULL_COUNT_EVERY = 2.0


def _runs_now(engine: Engine, conn: Any, study: Study) -> int:
    key = (str(engine.url), study.id)
    known = _run_counts.get(key)
    if known is not None and time.monotonic() - known[2] < _FULL_COUNT_EVERY:
        added, _ = queries.fit_input_count(conn, study.id, after_id=known[1])
        return known[0] + added
    count, last = queries.fit_input_count(conn, study.id)
    _run_counts[key] = (count, last, time.monotonic())
    return count


def _served_state(engine: Engine, study_name: str) -> _ServedState:
    with snapshot_connection(engine) as conn:
        study = get_study(conn, study_name)
        newest = queries.latest_done_fit(conn, study.id)
        current = newest if newest and newest["data_version"] == study.data_version else None
        current = current or queries.fit_of_version(conn, study.id, study.data_version)
        stale = newest is not None and newest["data_version"] != study.data_version
        runs_now = _runs_now(engine, conn, study) if stale else None
    record = _stored(engine, newest, study) if newest is not None else None
    return _ServedState(study, record, current, runs_now)


# Lookups in flight, per (database, study): concurrent requests of one event loop share one
# (one thread hop and one query per poll round, however many requests wait on a first fit).
_lookups: dict[tuple[str, str], asyncio.Future[_ServedState]] = {}


async def _served_state_async(engine: Engine, study_name: str) -> _ServedState:
    cache = commit_cache(engine)
    key = (str(engine.url), study_name)
    pending = _lookups.get(key)
    if pending is not None and pending.get_loop() is asyncio.get_running_loop():
        return await asyncio.shield(pending)
    future: asyncio.Future[_ServedState] = asyncio.get_running_loop().create_future()
    _lookups[key] = future
    try:
        state = await cache.get_or_load_async(("served_fit", study_name), lambda: _served_state(engine, study_name))
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
    bootstrap: int,
    created_by: str | None,
    fresh: bool = False,
    wait_seconds: float = FIRST_FIT_WAIT_SECONDS,
) -> ServedFit:
    """The fit to answer a recommendation from, at once: the newest completed one.

    If runs arrived since it, the answer carries a warning and a background refit is asked
    for. Only with no completed fit at all, or with `fresh` (a fit of at least the data as
    of this call), does it wait: polling from the event loop, at most `wait_seconds`, then
    FitInProgress (503 + Retry-After). A current-version fit the data cannot support is
    InsufficientData, as always.
    """
    deadline = time.monotonic() + wait_seconds
    wanted_version: int | None = None
    delay = 0.05
    while True:
        state = await _served_state_async(engine, study_name)
        study, newest = state.study, state.newest
        if state.current is not None and state.current["status"] == "failed":
            raise InsufficientData(state.current["error"] or "the study's runs do not support a fit")
        if wanted_version is None:
            wanted_version = study.data_version
        if newest is not None and newest.data_version >= wanted_version:
            return ServedFit(newest)
        if newest is not None and not fresh:
            _refitter.request(engine, study.id, bootstrap, created_by)
            return ServedFit(newest, (f"fitted on {newest.n_runs} of {state.runs_now} runs; a refit is running",))
        _refitter.request(engine, study.id, bootstrap, created_by)
        if time.monotonic() > deadline:
            what = "a fit of the current runs" if newest is not None else "the study's first fit"
            raise FitInProgress(f"{what} is still being computed; try again shortly")
        await asyncio.sleep(delay)
        delay = min(delay * 1.5, 0.5)
