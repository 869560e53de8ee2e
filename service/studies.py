"""Studies: look one up by name, create, list, show (with its run count and latest fit)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from service.errors import StudyExists, StudyNotFound
from service.limits import STUDY_NAME_PATTERN
from service.schemas import StudyIn
from store import queries, runviews
from store.db import Connection, Engine, read_connection, run_in_transaction
from store.models import Study

__all__ = [
    "Study",
    "StudySummary",
    "create_study",
    "find_study",
    "get_study",
    "list_studies",
    "list_studies_with_counts",
    "list_study_summaries",
    "show_study",
]

_VALID_NAME = re.compile(STUDY_NAME_PATTERN.removeprefix("^").removesuffix("$"))


@dataclass(frozen=True)
class StudySummary:
    """A study with its run count and newest finished fit (what `GET /v1/studies/{name}` shows)."""

    study: Study
    run_count: int
    latest_fit_id: int | None


def get_study(conn: Connection, name: str) -> Study:
    """The study called `name`; raises StudyNotFound.

    A name that could never have been created (NUL bytes, odd characters, too long) is
    unknown without asking the database, which may refuse to even compare it (PostgreSQL
    and NUL).
    """
    study = queries.get_study(conn, name) if _VALID_NAME.fullmatch(name) else None
    if study is None:
        raise StudyNotFound(name)
    return study


def find_study(engine: Engine, name: str) -> Study:
    with read_connection(engine) as conn:
        return get_study(conn, name)


def create_study(engine: Engine, fields: StudyIn, created_by: str | None) -> Study:
    """Create the study; raises StudyExists if the name is taken."""
    study = run_in_transaction(engine, lambda conn: queries.create_study(conn, fields.model_dump(), created_by))
    if study is None:
        raise StudyExists(fields.name)
    return study


def list_studies(engine: Engine) -> list[Study]:
    with read_connection(engine) as conn:
        return queries.list_studies(conn)


def list_studies_with_counts(engine: Engine) -> list[tuple[Study, int]]:
    """Every study with its number of runs (for the command line's `studies list`)."""
    return [(summary.study, summary.run_count) for summary in list_study_summaries(engine)]


def list_study_summaries(engine: Engine) -> list[StudySummary]:
    """Every study with its run count and newest finished fit (`GET /v1/studies`): three
    queries whatever the number of studies."""
    with read_connection(engine) as conn:
        counts = runviews.run_counts(conn)
        fits = runviews.latest_fit_ids(conn)
        return [
            StudySummary(study, counts.get(study.id, 0), fits.get(study.id)) for study in queries.list_studies(conn)
        ]


def show_study(engine: Engine, name: str) -> StudySummary:
    with read_connection(engine) as conn:
        study = get_study(conn, name)
        return StudySummary(study, queries.study_run_count(conn, study.id), queries.latest_fit_id(conn, study.id))
