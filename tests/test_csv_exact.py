"""Issue 19: runs.csv / `hpscale export` → `hpscale import` is exact for every value the API
accepts, and no cell can start a new row in any reader.

Text that would read back as something else ('007', '1e5', 'nan', '  padded  ', a leading
tab, an empty string) is escaped with a single quote, and an escaped cell is never stripped;
control characters and line breaks (but tab) are refused at validation with 422 naming the
field. A property test sends arbitrary text run keys, extra keys and extra values through
the API, the export and the import.
"""

from __future__ import annotations

import csv
import io
import itertools
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine

from hpscale.cli import main as cli
from service.csv_io import read_runs
from service.runs import export_csv, import_runs, list_runs, submit_runs
from service.schemas import RunIn, StudyIn
from service.studies import create_study
from store import queries
from store.db import run_in_transaction
from tests.conftest import assert_error, make_run

# Text the API accepts: anything but NUL, surrogates, control characters (tab is fine) and
# line/paragraph separators -- with the characters that matter to a CSV reader made likely.
TRICKY = ["'", "=", "+", "-", "@", "\t", " ", "\u00a0", "\u3000", ",", '"', ".", "_", "0", "7", "e", "E"]
TEXT_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")) | st.sampled_from(TRICKY)
NUMBER_LIKE = ["007", "1e5", "nan", "NaN", "-inf", "Infinity", "1_000", "١٢٣", " 12 ", "-0", "+1", ".5", "0x10"]
TEXT = st.text(TEXT_CHARS, max_size=30) | st.sampled_from(["", "'", "''", "  padded  ", "\ttab", *NUMBER_LIKE])
KEYS = st.text(TEXT_CHARS, min_size=1, max_size=12) | st.sampled_from(NUMBER_LIKE)
RUN_KEYS = st.text(TEXT_CHARS, min_size=1, max_size=40) | st.sampled_from([" =1+1", "'=x", *NUMBER_LIKE])
EXTRAS = st.dictionaries(KEYS, TEXT | st.floats(allow_nan=False, allow_infinity=False, width=64), max_size=4)
STUDIES = itertools.count()


def _runs_of(engine: Engine, study: str) -> list[tuple[Any, ...]]:
    page = list_runs(engine, study, cursor=None, limit=1000, filters=queries.RunFilters())
    return sorted(
        (
            item["run_key"],
            sorted((item["extra"] or {}).items()),
            item["n_params"],
            item["learning_rate"],
            item["final_loss"],
            item["seed"],
        )
        for item in page.items
    )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(RUN_KEYS, EXTRAS), min_size=1, max_size=6, unique_by=lambda pair: pair[0]))
def test_export_then_import_is_exact_for_any_text(engine: Engine, runs: list[tuple[str, dict[str, Any]]]) -> None:
    n = next(STUDIES)
    source, copy = f"src{n}", f"copy{n}"
    create_study(engine, StudyIn(name=source), "test")
    submitted = [
        RunIn.model_validate(make_run(i, run_key=key, extra=extra or None, seed=-i))
        for i, (key, extra) in enumerate(runs)
    ]
    submit_runs(engine, source, submitted, indexed=True, created_by="test")
    _, blocks = export_csv(engine, source)
    text = "".join(blocks)
    assert len(list(csv.reader(io.StringIO(text, newline="")))) == len(runs) + 1  # one row per run
    result = import_runs(engine, copy, lambda: read_runs(io.StringIO(text, newline="")), create=StudyIn(name=copy))
    assert result.inserted == len(runs)
    assert _runs_of(engine, copy) == _runs_of(engine, source)


def test_the_reviews_values_round_trip_through_both_exports(
    client: TestClient, database_url: str, tmp_path: Path
) -> None:
    extra = {"zeros": "007", "sci": "1e5", "padded": "  padded  ", "tab": "\ttab", "nan": "nan", "empty": ""}
    runs = [make_run(0, run_key=" =1+1", extra=extra), make_run(1, run_key="=1+1"), make_run(2, run_key="'quoted")]
    assert client.post("/v1/studies", json={"name": "exact"}).status_code == 201
    assert client.post("/v1/studies/exact/runs", json={"runs": runs}).status_code == 201
    http_export = client.get("/v1/studies/exact/runs.csv").content
    out = tmp_path / "exact.csv"
    assert cli(["export", "--study", "exact", "--database-url", database_url, "-o", str(out)]) == 0
    assert out.read_bytes() == http_export
    rows = {row["run_key"]: row for row in csv.DictReader(io.StringIO(http_export.decode(), newline=""))}
    assert set(rows) == {"' =1+1", "'=1+1", "''quoted"}
    assert rows["' =1+1"]["extra.zeros"] == "'007" and rows["' =1+1"]["extra.empty"] == "'"
    args = ["import", str(out), "--study", "exact2", "--create", "--database-url", database_url, "--quiet"]
    assert cli(args) == 0

    def stored(study: str) -> list[tuple[str, dict[str, Any]]]:
        items = client.get(f"/v1/studies/{study}/runs").json()["items"]
        return sorted((item["run_key"], item["extra"] or {}) for item in items)

    assert stored("exact2") == stored("exact")
    assert dict(stored("exact2"))[" =1+1"] == extra


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"run_key": "ok\r=1+2"}, "run_key"),
        ({"run_key": "line\nbreak"}, "run_key"),
        ({"extra": {"note": "ok\r=1+2"}}, "extra.note"),
        ({"extra": {"note": "bell\x07"}}, "extra.note"),
        ({"extra": {"note": "nel\x85"}}, "extra.note"),
        ({"extra": {"key\u2028": 1}}, "extra"),
    ],
)
def test_control_characters_in_text_are_422_naming_the_field(
    client: TestClient, engine: Engine, overrides: dict[str, Any], field: str
) -> None:
    client.post("/v1/studies", json={"name": "ctl"})
    response = client.post("/v1/studies/ctl/runs", json={"runs": [make_run(0), make_run(1, **overrides)]})
    error = assert_error(response, 422, "validation_error")
    assert error["details"][0]["field"].startswith(field) and error["details"][0]["index"] == 1
    assert "control characters" in error["details"][0]["message"]
    assert client.get("/v1/studies/ctl").json()["run_count"] == 0
    # A tab is fine.
    assert client.post("/v1/studies/ctl/runs", json=make_run(2, run_key="a\tb")).status_code == 201


def test_a_stored_carriage_return_is_quoted_in_the_export(engine: Engine) -> None:
    """Runs stored before the check (inserted here below the API) still cannot split a row."""
    study = create_study(engine, StudyIn(name="legacy"), "test")
    legacy = {**make_run(0, run_key="ok\r=1+2"), "extra": {"note": "a\rb"}, "weight_decay": 0.0, "status": "completed"}
    run_in_transaction(engine, lambda conn: queries.insert_runs(conn, study.id, [legacy], "test"))
    _, blocks = export_csv(engine, "legacy")
    text = "".join(blocks)
    assert '"ok\r=1+2"' in text and '"a\rb"' in text  # quoted: a CSV reader keeps them in their cell
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == 1 and rows[0]["run_key"] == "ok\r=1+2"
    # Every line the file has is a whole row (CRLF ends them) or inside a quoted cell.
    assert text.count("\r\n") == 2
