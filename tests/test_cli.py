"""The `hpscale` command: Step Law CSV import, CSV round trip, tokens, refusals."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from hpscale.cli import is_loopback, main
from tests.conftest import STEPLAW_CSV, count_rows, steplaw_import_argv


def import_steplaw(database_url: str, study: str = "steplaw") -> int:
    return main(steplaw_import_argv(database_url, study))


@pytest.mark.slow
def test_steplaw_import_loads_every_run(database_url: str, engine: Engine, client: TestClient) -> None:
    assert import_steplaw(database_url) == 0
    assert count_rows(engine) == 1746
    study = client.get("/v1/studies/steplaw").json()
    assert study["run_count"] == 1746 and study["seq_len"] == 2048
    with STEPLAW_CSV.open() as handle:
        first = next(csv.DictReader(handle))
    run = client.get("/v1/studies/steplaw/runs", params={"limit": 1}).json()["items"][0]
    assert run["run_key"] == first["exp_name"]
    assert run["final_loss"] == float(first["smooth loss"])
    assert run["width"] == int(first["h"]) and run["batch_size"] == int(first["bs"])
    assert run["extra"]["loss"] == float(first["loss"])  # unmapped columns are kept in extra
    # Importing again is idempotent by run_key.
    assert import_steplaw(database_url) == 0
    assert count_rows(engine) == 1746


def test_csv_round_trip(database_url: str, engine: Engine, client: TestClient, tmp_path: Path) -> None:
    client.post("/v1/studies", json={"name": "orig"})
    runs = [
        {
            "run_key": f"r{i}",
            "n_params": 1.234567e8 + i,
            "tokens": 2e9 / 3,
            "width": 256,
            "depth": 4,
            "learning_rate": 0.1 / 3**i,
            "batch_size": 16,
            "weight_decay": 0.1 * i,
            "status": "diverged" if i == 2 else "completed",
            "final_loss": None if i == 2 else 3.0 + 1 / 7 * i,
            "loss_curve": [[1e6, 5.5], [2e6, 4.25]] if i == 1 else None,
            "seed": i,
            "extra": {"warmup": 100 * i, "schedule": 'cos, "quoted"'} if i else None,
        }
        for i in range(5)
    ]
    assert client.post("/v1/studies/orig/runs", json={"runs": runs}).status_code == 201
    exported = tmp_path / "orig.csv"
    assert main(["export", "--study", "orig", "--database-url", database_url, "-o", str(exported)]) == 0
    assert exported.read_bytes() == client.get("/v1/studies/orig/runs.csv").content
    assert (
        main(["import", str(exported), "--study", "copy", "--create", "--database-url", database_url, "--quiet"]) == 0
    )

    def runs_of(study: str) -> list[dict]:
        items = client.get(f"/v1/studies/{study}/runs").json()["items"]
        return [
            {k: v for k, v in r.items() if k not in ("id", "created_at", "created_by", "submission_id")} for r in items
        ]

    assert runs_of("copy") == runs_of("orig")
    assert len(runs_of("copy")) == 5


def test_import_with_a_bad_row_stores_nothing(database_url: str, engine: Engine, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(
        "n_params,tokens,learning_rate,batch_size,final_loss\n"
        "1e8,1e9,0.001,32,3.1\n"
        "1e8,1e9,-0.001,32,3.2\n"
        "1e8,1e9,0.002,thirty,3.3\n"
    )
    assert main(["import", str(path), "--study", "s", "--create", "--database-url", database_url]) == 1
    err = capsys.readouterr().err
    assert "line 3: learning_rate" in err and "line 4: batch_size" in err
    assert count_rows(engine) == 0


def test_import_refuses_unknown_study_and_bad_map(database_url: str, tmp_path: Path) -> None:
    path = tmp_path / "ok.csv"
    path.write_text("n_params,tokens,learning_rate,batch_size,final_loss\n1e8,1e9,0.001,32,3.1\n")
    assert main(["import", str(path), "--study", "nope", "--database-url", database_url]) == 1
    assert (
        main(["import", str(path), "--study", "s", "--create", "--map", "x=width", "--database-url", database_url]) == 2
    )
    assert (
        main(
            ["import", str(path), "--study", "s", "--create", "--map", "n_params=bogus", "--database-url", database_url]
        )
        == 2
    )


def test_studies_create_list_and_import_create_set_what_the_fit_assumes(
    database_url: str, client: TestClient, tmp_path: Path, capsys
) -> None:
    """A CLI-made study is not silently `adamw · sp`: create/list/import --create carry its optimizer,
    parameterization, priors and sequence length, and say what the fit will assume."""
    argv = ["studies", "create", "muon-runs", "--optimizer", "muon", "--parameterization", "mup", "--seq-len", "4096"]
    assert main([*argv, "--base-width", "256", "--priors", "none", "--database-url", database_url]) == 0
    out = capsys.readouterr().out
    assert "optimizer muon, parameterization mup, priors none, seq_len 4096" in out
    study = client.get("/v1/studies/muon-runs").json()
    assert (study["optimizer"], study["parameterization"], study["priors"], study["seq_len"]) == (
        "muon",
        "mup",
        "none",
        4096,
    )
    assert study["base_width"] == 256
    path = tmp_path / "runs.csv"
    path.write_text("run_key,n_params,tokens,learning_rate,batch_size,final_loss\nr1,1e8,1e9,0.001,32,3.1\n")
    args = ["import", str(path), "--study", "horizon", "--create", "--optimizer", "lion", "--seq-len", "2048"]
    assert main([*args, "--quiet", "--database-url", database_url]) == 0
    assert "created study 'horizon': optimizer lion, parameterization sp" in capsys.readouterr().err
    assert client.get("/v1/studies/horizon").json()["optimizer"] == "lion"
    # Study options without --create would be ignored: refused instead.
    bare = ["import", str(path), "--study", "horizon", "--seq-len", "1024", "--database-url", database_url]
    assert main(bare) == 2 and "use them with --create" in capsys.readouterr().err
    # An existing study keeps its properties, and the import says so.
    assert main([*args[:5], "--optimizer", "adamw", "--quiet", "--database-url", database_url]) == 0
    assert "already existed" in capsys.readouterr().err
    assert main(["studies", "list", "--database-url", database_url]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["horizon"][1:3] == ["1", "lion"] and rows["muon-runs"][1:4] == ["0", "muon", "mup"]
    assert main(["studies", "create", "Bad Name", "--database-url", database_url]) == 2


def test_tokens_create_prints_token_last_and_works(
    database_url: str, engine: Engine, client: TestClient, capsys
) -> None:
    assert main(["tokens", "create", "--scope", "write", "--name", "launcher", "--database-url", database_url]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert client.get("/v1/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    assert main(["tokens", "create", "--scope", "read", "--name", "launcher", "--database-url", database_url]) == 1
    assert main(["tokens", "create", "--scope", "read", "--name", "x" * 65, "--database-url", database_url]) == 2
    assert main(["tokens", "list", "--database-url", database_url]) == 0
    listing = capsys.readouterr().out
    assert "launcher" in listing and token not in listing
    assert main(["tokens", "revoke", "launcher", "--database-url", database_url]) == 0
    assert client.get("/v1/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 401


@pytest.mark.parametrize(
    "host, loopback", [("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("10.1.2.3", False)]
)
def test_no_auth_only_on_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("how", ["flag", "environment"])
def test_serve_refuses_no_auth_on_public_host(tmp_path: Path, how: str) -> None:
    flag = ["--no-auth"] if how == "flag" else []
    env = {**__import__("os").environ, "HPSCALE_NO_AUTH": "1" if how == "environment" else "0"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "hpscale.cli",
            "serve",
            *flag,
            "--host",
            "0.0.0.0",
            "--database-url",
            f"sqlite:///{tmp_path / 'x.db'}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert result.returncode == 2 and "loopback" in result.stderr
