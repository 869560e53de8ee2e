"""Fits: each made once per (study, data version, bootstrap) across processes; answers never wait on one.

By concern:

- `records`  stored fits as the service hands them out (`FitRecord`), rebuilt once per
             process; a failed fit's domain error; fits of an older engine marked stale;
- `inputs`   a fit's input: the study and its runs read in one snapshot (COPY on PostgreSQL);
- `compute`  one fit under the study's fit lock (`store.leases`), its outcome recorded once;
- `child`    the fitting child process of each server process, killed past the maximum
             fit duration;
- `refitter` background refits: per study one running and one queued per process;
- `served`   the fit an answer comes from: at once, or after a bounded wait (`fresh`,
             a first fit, `POST .../fits`).

Where a law is fitted: `fitting.study_fit.fit_study`, called from `compute.fit_current`.
"""

from __future__ import annotations

from service.fits.compute import FIT_SEED, FitJob, fit_current
from service.fits.inputs import read_snapshot, run_table
from service.fits.records import FitRecord, fit_by_id, json_safe, latest_fit, outcome_error
from service.fits.served import (
    FitOptions,
    ServedFit,
    fit_now_async,
    forget_database,
    served_fit_async,
    start_background_refits,
    stop_background_refits,
    wait_for_background_refits,
)

__all__ = [
    "FIT_SEED",
    "FitJob",
    "FitOptions",
    "FitRecord",
    "ServedFit",
    "fit_by_id",
    "fit_current",
    "fit_now_async",
    "forget_database",
    "json_safe",
    "latest_fit",
    "outcome_error",
    "read_snapshot",
    "run_table",
    "served_fit_async",
    "start_background_refits",
    "stop_background_refits",
    "wait_for_background_refits",
]
