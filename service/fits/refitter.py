"""Background refits of one server process: per study at most one running and one queued.

A request for a study whose refit is running only merges into its queued one; when the
running one ends, the queued one runs once, on whatever the runs are then — so a stream of
batches costs one refit at a time, each starting from the newest data as soon as the
previous one ends, and answers are never more than one fit behind. Across processes the
study's fit lock (`store.leases`) lets one fit at a time: a refit that finds it taken waits
for it (polling the lock, not the child) and then fits only if the runs as of its request
still have no outcome.

Each refit is made in this process's fitting child (`service.fits.child`), which the
refitter kills when a fit runs past the maximum duration: that fit is recorded as failed
(`fit_failed`, "took longer than …"), so nothing refits those runs until they change, and
the next queued refit starts. A child that dies mid-fit (kill -9, out of memory) has its
claim dropped and the refit is tried again at once; dying twice on the same runs is recorded
as a failure too. In-memory databases (tests) fit in the refitter's thread instead.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field

from service.fits.child import ChildDied, ChildError, ChildStopped, FitChild, FitTimedOut
from service.fits.compute import BUSY, Attempt, FitJob, drop_claim, fit_current
from service.fits.records import FIT_FAILED
from service.metrics import record_fit
from store import leases, queries
from store.db import Connection, Engine, read_connection, run_in_transaction

log = logging.getLogger("hpscale")

# How often a refit that found the study's lock taken looks again.
BUSY_POLL_SECONDS = 0.1
# A child that dies this many times in a row on one study's refit records it as failed.
MAX_CHILD_DEATHS = 2
# Tests or embedders may set this to False to fit in the refitter's thread.
REFIT_IN_CHILD_PROCESS = True


@dataclass(frozen=True)
class _Ask:
    min_version: int  # the newest data version asked about
    created_by: str | None
    max_seconds: float  # the latest request's maximum fit duration


@dataclass
class _Wanted:
    """The refits asked of one study, by (bootstrap, exact)."""

    jobs: dict[tuple[int, bool], _Ask] = field(default_factory=dict)

    def add(self, bootstrap: int, exact: bool, ask: _Ask) -> None:
        known = self.jobs.get((bootstrap, exact))
        version = ask.min_version if known is None else max(known.min_version, ask.min_version)
        self.jobs[(bootstrap, exact)] = _Ask(version, ask.created_by, ask.max_seconds)


class Refitter:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        # Per (database URL, study id): when the last refit failed outside the engine (the
        # database, the fitting child), and why, so that requests waiting on it answer now.
        self._failures: dict[tuple[str, int], tuple[float, str]] = {}
        self._queued: dict[tuple[str, int], _Wanted] = {}  # a key is present while its thread runs
        self._child = FitChild()

    def request(
        self,
        engine: Engine,
        study_id: int,
        *,
        bootstrap: int,
        exact: bool,
        min_version: int,
        created_by: str | None,
        max_seconds: float,
    ) -> None:
        """Ask for a fit of the study's runs as of `min_version` (or later); never waits."""
        key = (str(engine.url), study_id)
        with self._lock:
            running = key in self._queued
            wanted = self._queued.setdefault(key, _Wanted())
            wanted.add(bootstrap, exact, _Ask(min_version, created_by, max_seconds))
            if running:
                return
        thread = threading.Thread(
            target=self._loop,
            args=(engine, key),
            name=f"hpscale-refit-{study_id}",
            daemon=True,
        )
        thread.start()

    def _loop(self, engine: Engine, key: tuple[str, int]) -> None:
        while True:
            with self._lock:
                wanted = self._queued[key]
                if not wanted.jobs:
                    del self._queued[key]
                    self._idle.notify_all()
                    return
                jobs, wanted.jobs = wanted.jobs, {}
            for (bootstrap, exact), ask in jobs.items():
                try:
                    self._until_covered(
                        engine, key[1], bootstrap, exact, ask.min_version, ask.created_by, ask.max_seconds
                    )
                except Exception as error:
                    with self._lock:
                        self._failures[key] = (time.monotonic(), str(error) or type(error).__name__)
                    log.warning("background refit of study %s failed", key[1], exc_info=True)
                    time.sleep(1.0)  # do not hammer a database that just failed

    def _until_covered(
        self,
        engine: Engine,
        study_id: int,
        bootstrap: int,
        exact: bool,
        min_version: int,
        created_by: str | None,
        max_seconds: float,
    ) -> None:
        deaths = 0
        while True:
            job = FitJob(study_id, bootstrap, exact, min_version, owner=uuid.uuid4().hex, created_by=created_by)
            try:
                attempt = self._run(engine, job, max_seconds)
            except FitTimedOut as error:
                _record_failure(engine, job, f"{error} (HPSCALE_MAX_FIT_SECONDS) and was stopped")
                return
            except ChildDied as error:
                deaths += 1
                if deaths >= MAX_CHILD_DEATHS:
                    _record_failure(engine, job, f"{error} {deaths} times while fitting these runs")
                    return
                _release(engine, job)
                log.warning("study %s: %s; fitting again", study_id, error)
                continue
            except ChildStopped:
                _release(engine, job)  # shutting down: whoever asks next fits
                return
            except ChildError as error:
                _release(engine, job)
                raise RuntimeError(str(error)) from None
            record_fit(attempt.engine_outcome, attempt.seconds)
            if attempt.outcome != BUSY:
                return
            if not _wait_while_locked(engine, study_id, max_seconds + 30.0):
                return  # a fit elsewhere holds it past any deadline: the next request asks again

    def _run(self, engine: Engine, job: FitJob, max_seconds: float) -> Attempt:
        if not REFIT_IN_CHILD_PROCESS or str(engine.url).endswith(":memory:"):
            return fit_current(engine, job)
        return self._child.run(engine, job, max_seconds)

    def failure_since(self, url: str, study_id: int, since: float) -> str | None:
        """Why the study's last refit failed outside the engine, if it failed after `since`
        (a `time.monotonic()` value); None otherwise."""
        with self._lock:
            failed = self._failures.get((url, study_id))
        return failed[1] if failed is not None and failed[0] >= since else None

    def wait_idle(self, timeout: float, url: str | None = None) -> bool:
        """Wait until no refit runs in this process (of the database at `url`, if given;
        tests, shutdown); whether it is idle."""
        with self._lock:
            return self._idle.wait_for(lambda: not any(url in (None, key[0]) for key in self._queued), timeout)

    def warm(self) -> None:
        if REFIT_IN_CHILD_PROCESS:
            threading.Thread(target=self._child.warm, name="hpscale-fit-warm", daemon=True).start()

    def child_pid(self) -> int | None:
        return self._child.pid()

    def stop(self) -> None:
        self._child.stop()


def _wait_while_locked(engine: Engine, study_id: int, timeout: float) -> bool:
    """Sleep until no process holds the study's fit lock (a cheap query, not a child round
    trip); False if it is still held after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(BUSY_POLL_SECONDS)
        with read_connection(engine) as conn:
            if not leases.is_locked(conn, study_id):
                return True
    return False


def _release(engine: Engine, job: FitJob) -> None:
    """After the child died: drop its claim, and its lease at once (it will never renew it)."""
    drop_claim(engine, job.owner)
    if engine.dialect.name != "postgresql":
        run_in_transaction(engine, lambda conn: leases.release_lease(conn, job.study_id, job.owner))


def _record_failure(engine: Engine, job: FitJob, reason: str) -> None:
    """The child was stopped on this job: its running fit is recorded as failed (once)."""
    log.warning("study %s: %s", job.study_id, reason)

    def work(conn: Connection) -> None:
        queries.record_failed_fit(conn, job.study_id, job.bootstrap, job.owner, FIT_FAILED, reason)
        if engine.dialect.name != "postgresql":
            leases.release_lease(conn, job.study_id, job.owner)

    run_in_transaction(engine, work)
