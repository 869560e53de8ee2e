"""One fit of a study's current runs, made once across processes, its outcome recorded once.

`fit_current` runs in the fitting process (the server's refit child, see `service.fits.child`):

1. take the study's fit lock (`store.leases`: an advisory lock on PostgreSQL, a lease on the
   database's clock elsewhere), or return "busy" at once: one fit per study at a time,
   across every process and host;
2. if the runs as of `min_version` (or later) have an outcome already, return "covered";
3. read the study and its runs in one snapshot, and claim the fit of *that* data version
   (a 'running' row owned by this attempt's token); runs arriving meanwhile change nothing:
   the fit fits the snapshot it took and finishes (the next one starts from the newer data);
4. fit, and record the outcome exactly once: "done" with the result, or "failed" with the
   reason — InsufficientData is `insufficient_data`, any other exception of the engine is
   `fit_failed` (a bug to fix, but a recorded one: requests for those runs answer at once and
   nothing refits until the runs change). Every write checks the owner token, so an attempt
   that lost its claim (taken over, released) writes nothing and raises nothing.

A database failure is not the data's fault: the claim is dropped and nothing is recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fitting.common import InsufficientData as EngineInsufficientData
from fitting.study_fit import fit_study
from service.fits.inputs import read_snapshot
from service.fits.records import FIT_FAILED, INSUFFICIENT_DATA
from store import leases, queries
from store.db import Engine, read_connection, run_in_transaction

FIT_SEED = 20250101
# Longest reason stored for a failed fit (an engine's message can carry arrays).
_MAX_REASON = 500

log = logging.getLogger("hpscale")

# Outcomes of one attempt.
BUSY = "busy"  # another process holds the study's fit lock
COVERED = "covered"  # the runs as of min_version already have an outcome
DONE = "done"
FAILED = "failed"
LOST = "lost"  # the claim was taken over or released meanwhile: nothing written


@dataclass(frozen=True)
class Attempt:
    """What one attempt did: its outcome (BUSY … LOST), the engine's outcome for /metrics
    ("done", "insufficient_data", "error"; None if the engine did not run) and the seconds
    each stage took (read, fit, write)."""

    outcome: str
    engine_outcome: str | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class FitJob:
    """What to fit: the study's current runs, unless those as of `min_version` have an outcome
    (a done fit with exactly `bootstrap` resamples when `exact`, with any count otherwise, or a
    failed one). `owner` is this attempt's token (a new one per attempt)."""

    study_id: int
    bootstrap: int
    exact: bool
    min_version: int
    owner: str
    created_by: str | None


def _covered(conn: Any, job: FitJob, version: int) -> bool:
    return queries.fit_outcome(conn, job.study_id, version, job.bootstrap if job.exact else None) is not None


def failure_reason(error: BaseException) -> str:
    """A failed fit's recorded reason for an exception of the engine that is not a refusal."""
    text = f"the fitting engine failed on these runs ({type(error).__name__}: {error})"
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 1] + "…"


@contextmanager
def _timed(seconds: dict[str, float], stage: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] = time.perf_counter() - started


def fit_current(engine: Engine, job: FitJob, on_claimed: Callable[[], None] | None = None) -> Attempt:
    """Fit the study's current runs for `job` (see the module docstring); what it did.

    `on_claimed` is called once the lock is held, before the runs are read: from there the
    fit's duration counts (the server kills a fit past HPSCALE_MAX_FIT_SECONDS).
    """
    lock = leases.try_lock(engine, job.study_id, job.owner)
    if lock is None:
        return Attempt(BUSY)
    seconds: dict[str, float] = {}
    with lock:
        with read_connection(engine) as conn:
            if _covered(conn, job, job.min_version):
                return Attempt(COVERED)
        if on_claimed is not None:
            on_claimed()
        with _timed(seconds, "read"):
            study, table = read_snapshot(engine, job.study_id)
        version, n_runs = study.data_version, len(table)

        def claim(conn: Any) -> int | None:
            fit_id = None
            if not _covered(conn, job, version):  # a dead claim of this very fit is taken over
                fit_id = queries.claim_fit(conn, job.study_id, version, job.bootstrap, job.owner, job.created_by)
            queries.drop_abandoned_fits(conn, job.study_id, job.owner)  # under the lock, the others are dead
            return fit_id

        fit_id = run_in_transaction(engine, claim)
        if fit_id is None:
            return Attempt(COVERED, seconds=seconds)
        try:
            outcome: dict[str, Any]
            try:
                with _timed(seconds, "fit"):
                    result = fit_study(
                        table,
                        bootstrap=job.bootstrap,
                        seed=FIT_SEED,
                        seq_len=study.seq_len,
                        parameterization=study.parameterization,
                        optimizer=study.optimizer,
                        priors=study.priors,
                    )
                    state = result.to_state()
                    del result
                engine_outcome = "done"
                outcome = {"status": DONE, "result": state}
            except EngineInsufficientData as error:
                engine_outcome = INSUFFICIENT_DATA
                outcome = {"status": FAILED, "result": None, "error_code": INSUFFICIENT_DATA, "error": str(error)}
            except Exception as error:
                log.exception("study %s: the fitting engine failed on data version %s", job.study_id, version)
                engine_outcome = "error"
                outcome = {"status": FAILED, "result": None, "error_code": FIT_FAILED, "error": failure_reason(error)}
            del table  # the fit's input need not outlive it while the result is written
            if lock.lost:
                return Attempt(LOST, engine_outcome, seconds)
            with _timed(seconds, "write"):
                written = run_in_transaction(
                    engine, lambda conn: queries.finish_fit(conn, fit_id, job.owner, n_runs=n_runs, **outcome)
                )
            return Attempt(str(outcome["status"]) if written else LOST, engine_outcome, seconds)
        except BaseException:
            # A database failure (or a stop): the runs did not cause it, so nothing is recorded;
            # the claim goes, and whichever process asks next fits again.
            drop_claim(engine, job.owner)
            raise


def drop_claim(engine: Engine, owner: str) -> None:
    """Drop `owner`'s running fit (and nothing else); if even that fails, the next lock holder drops it."""
    try:
        run_in_transaction(engine, lambda conn: queries.drop_owned_fits(conn, owner), attempts=3)
    except Exception:
        log.warning("could not drop the claim of fit attempt %s", owner, exc_info=True)
