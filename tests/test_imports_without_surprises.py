"""`hpscale import`, `export` and the CLI without surprises (issue 21), on SQLite and PostgreSQL,
with the real shared data:

- a CSV with no column mapped to run_key imports once (content keys), however often it is run;
- a source without weight decay stores it as unknown, and an export says so with an empty cell;
- export → import carries exclusions (and their reasons) and submissions (each undoable);
- --skip-invalid imports the rest and lists what it left out; errors name the source;
- undoing a submission twice says so; a mistyped Optuna sqlite path creates nothing;
- imports and submissions are in the audit log with who did them, and counted in /metrics;
- `hpscale runs list` and an up-to-date top-level help.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from hpscale.cli import build_parser, main
from store.models import Run
from tests.conftest import SHARED_DATA, count_rows, steplaw_import_argv

MARIN_MAP = [
    "non_embedding_params=n_params",
    "hidden_dim=width",
    "num_layers=depth",
    "cfg_learning_rate=learning_rate",
    "cfg_train_batch_size=batch_size",
    "cfg_weight_decay=weight_decay",
    "loss=final_loss",
]


def marin_adamw(tmp_path: Path) -> Path:
    """The Marin ablations' AdamW rows (the file's own columns and cells, other optimizers left out)."""
    with (SHARED_DATA / "marin_ablations.csv").open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [row for row in reader if row[0] == "adamw"]
    # Only the columns the runs need and a few of their config (the file has ~50): fewer extra keys.
    keep = [header.index(c) for c in ("optimizer", "param", "value", "seq_len", "tokens", "cfg_warmup", "cfg_beta2")]
    keep += [header.index(m.split("=")[0]) for m in MARIN_MAP]
    path = tmp_path / "marin_adamw.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([header[i] for i in keep])
        writer.writerows([[row[i] for i in keep] for row in rows])
    return path


def db(database_url: str) -> list[str]:
    return ["--database-url", database_url, "--quiet"]


def test_a_csv_without_run_keys_imports_once(database_url: str, engine: Engine, tmp_path: Path, capsys) -> None:
    """Issue item 1: the Marin ablations imported twice were 340 runs. (One AdamW row has no loss:
    --skip-invalid leaves it out, both times.)"""
    path = marin_adamw(tmp_path)
    args = ["import", str(path), "--study", "marin", "--create", "--skip-invalid", *db(database_url)]
    args += [a for m in MARIN_MAP for a in ("--map", m)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "imported 170 runs" in captured.out and "got one from their content" in captured.err
    assert "line 139: final_loss" in captured.err
    assert main(args) == 0
    assert "imported 0 runs into 'marin' (170 duplicates skipped)" in capsys.readouterr().out
    assert count_rows(engine) == 170
    with engine.connect() as conn:
        keys = list(conn.execute(select(Run.run_key)).scalars())
    assert len(set(keys)) == 170 and all(k.startswith("auto-") for k in keys)
    # the key is the Python client's rule over the row as read: a client submitting the same run
    # (as the CSV reads it) gets the same key
    from hpscale.client import content_run_key
    from service.runs import content_run_key as server_rule

    row = {"n_params": 1.3e8, "tokens": 2.6e9, "learning_rate": 0.008, "batch_size": 128, "final_loss": 3.5}
    assert content_run_key(row) == server_rule(row)


def test_a_source_without_weight_decay_stores_it_as_unknown(
    client: TestClient, database_url: str, engine: Engine, tmp_path: Path
) -> None:
    """Issue item 3: Step Law has no weight-decay column; 'WD 0' read like a measured 0."""
    assert main(steplaw_import_argv(database_url)) == 0
    with engine.connect() as conn:
        assert set(conn.execute(select(Run.weight_decay)).scalars()) == {None}
    run = client.get("/v1/studies/steplaw/runs", params={"limit": 1}).json()["items"][0]
    assert run["weight_decay"] is None
    exported = list(csv.DictReader(io.StringIO(client.get("/v1/studies/steplaw/runs.csv").text)))
    assert {row["weight_decay"] for row in exported} == {""}
    # a measured 0 stays 0, over HTTP (the contract's default) and through export/import
    client.post("/v1/studies", json={"name": "measured"})
    client.post(
        "/v1/studies/measured/runs",
        json={
            "n_params": 1e8,
            "tokens": 1e9,
            "learning_rate": 1e-3,
            "batch_size": 32,
            "final_loss": 3.0,
            "weight_decay": 0.0,
        },
    )
    assert client.get("/v1/studies/measured/runs").json()["items"][0]["weight_decay"] == 0.0


def test_export_and_import_carry_exclusions_and_submissions(
    client: TestClient, database_url: str, engine: Engine, tmp_path: Path, capsys
) -> None:
    """Issue item 4: export dropped excluded, excluded_reason and submission_id."""
    client.post("/v1/studies", json={"name": "a"})
    first = [
        {
            "run_key": f"r{i}",
            "n_params": 1e8,
            "tokens": 2e9,
            "learning_rate": 1e-3 * (i + 1),
            "batch_size": 64,
            "final_loss": 3.0 + 0.01 * i,
        }
        for i in range(4)
    ]
    second = [{**r, "run_key": f"s{i}", "weight_decay": 0.1} for i, r in enumerate(first[:3])]
    sub1 = client.post("/v1/studies/a/runs", json={"runs": first}).json()
    sub2 = client.post("/v1/studies/a/runs", json={"runs": second}).json()
    client.post(f"/v1/studies/a/runs/{sub1['ids'][2]}/exclude", json={"reason": "node failure, step 9k"})
    out = tmp_path / "a.csv"
    assert main(["export", "--study", "a", "-o", str(out), "--database-url", database_url]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert {"excluded", "excluded_reason", "submission_id"} <= set(header)
    assert main(["import", str(out), "--study", "b", "--create", *db(database_url)]) == 0
    printed = capsys.readouterr().out
    assert "imported 7 runs into 'b'" in printed and "submissions are these submissions here" in printed
    runs = {r["run_key"]: r for r in client.get("/v1/studies/b/runs").json()["items"]}
    assert runs["r2"]["excluded"] and runs["r2"]["excluded_reason"] == "node failure, step 9k"
    assert not any(r["excluded"] for key, r in runs.items() if key != "r2")
    # each exported submission is one submission here: undoing one takes exactly its runs
    here = {runs["r0"]["submission_id"], runs["s0"]["submission_id"]}
    assert len(here) == 2 and {runs[f"r{i}"]["submission_id"] for i in range(4)} == {runs["r0"]["submission_id"]}
    assert sub1["submission_id"] != sub2["submission_id"]
    deleted = client.delete(f"/v1/studies/b/submissions/{runs['s0']['submission_id']}").json()["deleted"]
    assert deleted == 3 and sorted(r["run_key"] for r in client.get("/v1/studies/b/runs").json()["items"]) == [
        "r0",
        "r1",
        "r2",
        "r3",
    ]
    # and the fit of b leaves r2 out, as a's did
    assert runs["s0"]["weight_decay"] == 0.1 and runs["r0"]["weight_decay"] == 0.0


def test_skip_invalid_imports_the_rest_and_says_what_it_left(
    database_url: str, engine: Engine, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "sweep.csv"
    lines = ["run_key,n_params,tokens,learning_rate,batch_size,final_loss"]
    lines += [f"k{i},1e8,2e9,{-1 if i in (3, 7) else 1e-3 * (i + 1)},64,3.{i}" for i in range(10)]
    path.write_text("\n".join(lines) + "\n")
    assert main(["import", str(path), "--study", "s", "--create", *db(database_url)]) == 1
    err = capsys.readouterr().err
    assert "2 problem(s) in 2 run(s) of the file sweep.csv; nothing was imported" in err and "--skip-invalid" in err
    assert "line 5: learning_rate: must be > 0" in err and count_rows(engine) == 0
    assert main(["import", str(path), "--study", "s", "--create", "--skip-invalid", *db(database_url)]) == 0
    captured = capsys.readouterr()
    assert "imported 8 runs" in captured.out
    assert "skipped 2 invalid run(s) of the file sweep.csv" in captured.err and "line 9: learning_rate" in captured.err
    assert count_rows(engine) == 8


def test_undoing_twice_says_so(database_url: str, engine: Engine, tmp_path: Path, capsys) -> None:
    """Issue item 5: the second undo printed "deleted 0 runs", exit 0, and audited again."""
    path = tmp_path / "runs.csv"
    path.write_text("n_params,tokens,learning_rate,batch_size,final_loss\n1e8,1e9,0.001,32,3.1\n1e8,1e9,0.002,32,3\n")
    assert main(["import", str(path), "--study", "u", "--create", *db(database_url)]) == 0
    undo = ["import", "--undo", "1", "--study", "u", "--database-url", database_url]
    assert main(undo) == 0 and "deleted 2 runs" in capsys.readouterr().out
    assert main(undo) == 1
    err = capsys.readouterr().err
    assert "already undone" in err and "by cli" in err and "2 runs deleted then" in err
    assert main(["audit", "--study", "u", "--database-url", database_url]) == 0
    assert capsys.readouterr().out.count("delete_submission") == 1


def test_a_mistyped_optuna_sqlite_storage_creates_nothing(database_url: str, tmp_path: Path, capsys) -> None:
    pytest.importorskip("optuna")
    missing = tmp_path / "optuna-typo.db"
    args = ["import", "--from", "optuna", "--storage", f"sqlite:///{missing}", "--source-study", "x"]
    assert main([*args, "--study", "o", "--create", *db(database_url)]) == 2
    err = capsys.readouterr().err
    assert f"no Optuna storage at {missing}" in err and err.count("error:") == 1
    assert not missing.exists()


def test_imports_and_submissions_are_audited_and_counted(
    client: TestClient, database_url: str, engine: Engine, tmp_path: Path, capsys
) -> None:
    """Issue item 5: the audit log had no imports or submissions; the ingest counter counted HTTP only."""
    before = client.get("/metrics").text
    path = tmp_path / "runs.csv"
    path.write_text(
        "n_params,tokens,learning_rate,batch_size,final_loss\n"
        + "".join(f"1e8,1e9,0.00{i},32,3.{i}\n" for i in range(1, 6))
    )
    assert main(["import", str(path), "--study", "m", "--create", *db(database_url)]) == 0
    client.post(
        "/v1/studies/m/runs",
        json={"n_params": 2e8, "tokens": 1e9, "learning_rate": 1e-3, "batch_size": 32, "final_loss": 3.0},
    )
    audit = client.get("/v1/studies/m/audit").json()["items"]
    assert [(a["action"], a["actor"], a["count"]) for a in audit] == [
        ("submit", "test-admin", 1),
        ("import_csv", "cli", 5),
    ]
    assert "runs.csv" in audit[1]["reason"]
    after = client.get("/metrics").text

    def value(text: str, source: str) -> float:
        for line in text.splitlines():
            if line.startswith(f'hpscale_runs_ingested_total{{source="{source}"}}'):
                return float(line.split()[-1])
        return 0.0

    assert value(after, "csv") - value(before, "csv") == 5  # stored by another process
    assert value(after, "http") - value(before, "http") == 1


def test_runs_list_and_the_top_level_help(database_url: str, engine: Engine, capsys) -> None:
    """Issue item 16: no `runs list`, and a top-level help that was out of date."""
    assert main(steplaw_import_argv(database_url)) == 0
    capsys.readouterr()
    base = ["runs", "list", "--study", "steplaw", "--database-url", database_url]
    assert main([*base, "--limit", "5"]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].split()[:3] == ["id", "run_key", "state"] and len(lines) == 6
    assert "5 run(s) (more" in captured.err and "no fit yet" in captured.err
    assert main([*base, "--sort", "final_loss", "--limit", "1"]) == 0
    best = capsys.readouterr().out.splitlines()[1]
    with engine.connect() as conn:
        lowest = min(conn.execute(select(Run.final_loss)).scalars())
    assert f"{lowest:.4g}" in best
    assert main([*base, "--state", "diverged"]) == 1  # no fit yet: says so
    assert "no fit yet" in capsys.readouterr().err
    assert main([*base, "--csv", "--status", "completed"]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 1746
    # the help names every command, and the sort columns are the server's
    from hpscale.cli import SORTABLE_COLUMNS
    from service.runs import SORTABLE

    assert SORTABLE_COLUMNS == SORTABLE
    parser = build_parser()
    help_text = parser.format_help()
    for command in (
        "db upgrade",
        "studies create|list|delete",
        "runs list|exclude|include",
        "tokens create|list|revoke",
    ):
        assert command in help_text, command
    # every command the parser has is in the help's own list (a new one cannot be left out)
    import argparse

    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    listed = {
        line.split()[0] for line in (parser.description or "").splitlines() if line.startswith("  ") and line.strip()
    }
    assert set(commands) <= listed, set(commands) - listed
