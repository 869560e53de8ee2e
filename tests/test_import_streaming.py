"""The CLI import reads its file twice (validate, then write) in bounded memory (issue 11)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from hpscale.cli import main
from service.errors import InvalidRuns
from service.runs import import_runs
from service.schemas import StudyIn
from tests.conftest import count_rows, make_run

HEADER = "run_key,n_params,tokens,learning_rate,batch_size,final_loss\n"


def write_csv(path: Path, n: int, bad_line: int | None = None) -> None:
    with path.open("w") as handle:
        handle.write(HEADER)
        for i in range(n):
            loss = "oops" if i + 2 == bad_line else f"{3 + i * 1e-4}"
            handle.write(f"r{i},1e8,2e9,{1e-3 * (1 + i % 5)},64,{loss}\n")


def test_a_streamed_import_stores_every_row_in_batches(database_url: str, engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    write_csv(path, 2500)
    args = ["import", str(path), "--study", "s", "--create", "--database-url", database_url, "--quiet"]
    assert main([*args, "--batch-size", "1000"]) == 0
    assert count_rows(engine) == 2500


def test_a_bad_row_in_a_streamed_import_stores_nothing(database_url: str, engine: Engine, tmp_path: Path) -> None:
    path = tmp_path / "runs.csv"
    write_csv(path, 2500, bad_line=2400)  # after two write batches would have gone through
    args = ["import", str(path), "--study", "s", "--create", "--database-url", database_url, "--quiet"]
    assert main([*args, "--batch-size", "1000"]) != 0
    assert count_rows(engine) == 0


def test_rows_that_change_between_the_passes_store_nothing(engine: Engine) -> None:
    reads = 0

    def rows() -> Iterator[tuple[int, dict[str, Any]]]:
        nonlocal reads
        reads += 1
        for i in range(30):
            # The second read (the write pass) finds row 25 changed into an invalid one.
            broken = reads > 1 and i == 25
            yield i + 2, make_run(i, final_loss="oops" if broken else 3.0 + i * 1e-3)

    with pytest.raises(InvalidRuns, match="changed during the import") as raised:
        import_runs(engine, "s", rows, create=StudyIn(name="s"), batch_size=10)
    assert raised.value.details[0]["index"] == 27
    assert reads == 2 and count_rows(engine) == 0


def test_the_export_blocks_equal_the_line_by_line_export(database_url: str, engine: Engine, tmp_path: Path) -> None:
    from service.csv_io import csv_lines
    from service.runs import export_csv
    from store import queries

    path = tmp_path / "runs.csv"
    with path.open("w") as handle:
        handle.write(HEADER.rstrip("\n") + ",weight_decay,seq_len,note,gpu\n")
        for i in range(120):
            note = ["=cmd()", "plain", "", "'quoted", "-1"][i % 5]
            handle.write(
                f"r{i},1e8,2e9,{1e-3 * (1 + i % 5)},64,{3 + i * 1e-4},{0.1 if i % 2 else ''},2048,{note},{i}\n"
            )
    args = ["import", str(path), "--study", "s", "--create", "--database-url", database_url, "--quiet"]
    assert main(args) == 0
    study, blocks = export_csv(engine, "s")
    by_lines = "".join(csv_lines(queries.iter_runs(engine, study.id), queries.run_extra_keys(engine, study.id)))
    assert "".join(blocks) == by_lines
    assert by_lines.count("\n") == 121 and "'=cmd()" in by_lines
