"""The command line's undo and exclusion verbs, how it finds its database, token re-creation,
and one clear message (with a hint) where it used to print thousands or the same twice."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import Engine

from hpscale.cli import main
from service import undo
from tests.conftest import STEPLAW_CSV, count_rows


def test_import_undo_and_runs_exclude_include(database_url: str, engine: Engine, tmp_path: Path, capsys) -> None:
    csv = tmp_path / "runs.csv"
    csv.write_text(
        "n_params,tokens,learning_rate,batch_size,final_loss\n"
        + "".join(f"1e8,1e9,0.00{i},32,3.1\n" for i in (1, 2, 3))
    )
    db = ["--database-url", database_url]
    assert main(["import", str(csv), "--study", "c", "--create", "--quiet", *db]) == 0
    captured = capsys.readouterr()
    assert "undo with: hpscale import --undo 1 --study c" in captured.out
    assert f"using database {database_url.split('://')[0]}" in captured.err
    assert main(["runs", "exclude", "1", "2", "--study", "c", "--reason", "bad node", *db]) == 0
    assert main(["runs", "exclude", "99", "--study", "c", "--reason", "x", *db]) == 1
    assert "no run 99" in capsys.readouterr().err
    assert main(["runs", "include", "2", "--study", "c", *db]) == 0
    assert main(["audit", "--study", "c", *db]) == 0
    table = capsys.readouterr().out
    assert "exclude" in table and "bad node" in table and "include" in table
    assert main(["import", "--undo", "1", "--study", "c", "--reason", "wrong file", *db]) == 0
    assert "deleted 3 runs of submission 1" in capsys.readouterr().out and count_rows(engine) == 0
    assert main(["studies", "delete", "c", *db]) == 2
    assert "pass --yes" in capsys.readouterr().err
    assert main(["studies", "delete", "c", "--yes", *db]) == 0
    actions = [r.action for r in undo.audit_log(engine, "c")]
    assert actions == ["delete_study", "delete_submission", "include", "exclude", "exclude", "import_csv"]


def test_cli_refuses_a_database_that_is_not_there(tmp_path: Path, monkeypatch, capsys) -> None:
    """`tokens create` outside the project no longer makes a new hpscale.db there."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HPSCALE_DATABASE_URL", raising=False)
    assert main(["tokens", "create", "--scope", "read"]) == 2
    err = capsys.readouterr().err
    assert f"no database at {tmp_path / 'hpscale.db'}" in err and "HPSCALE_DATABASE_URL" in err
    assert not (tmp_path / "hpscale.db").exists()
    assert main(["db", "upgrade"]) == 0 and (tmp_path / "hpscale.db").exists()
    assert "database at revision" in capsys.readouterr().out
    assert main(["tokens", "create", "--scope", "read", "--name", "w"]) == 0
    first = capsys.readouterr()
    token = first.out.strip()
    assert token.startswith("hps_") and "\n" not in token  # TOKEN=$(...) holds just the token
    assert "shown only once" in first.err
    assert main(["tokens", "create", "--scope", "read", "--name", "w"]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["tokens", "create", "--scope", "read", "--name", "w", "--force"]) == 0
    assert capsys.readouterr().out.strip() not in ("", token)


def test_mapping_refusals_are_one_message(database_url: str, engine: Engine, capsys) -> None:
    if not STEPLAW_CSV.exists():
        pytest.skip("shared Step Law data missing")
    db = ["--database-url", database_url]
    args = ["import", str(STEPLAW_CSV), "--study", "s", "--create", "--quiet", *db]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") <= 3 and "--map" in err and "learning_rate" in err  # not 6,984 problems
    assert main([*args, "--map", "h=width", "--map", "numh=width"]) == 2
    assert "same field" in capsys.readouterr().err
    assert main([*args, "--map", "h=width", "--map", "h=depth"]) == 2
    assert "twice" in capsys.readouterr().err
    assert count_rows(engine) == 0


def test_every_option_has_help() -> None:
    import argparse

    from hpscale.cli import build_parser

    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, f"{path} {name}")
            elif not action.help and action.dest != "help":
                missing.append(f"{path} {action.dest}")

    walk(build_parser(), "hpscale")
    assert missing == []


@pytest.mark.slow
def test_recommend_hints_and_says_things_once(database_url: str, engine: Engine, capsys, monkeypatch) -> None:
    """Against a real `hpscale serve`: a missing token gets a hint naming --token-file and
    $HPSCALE_TOKEN; a missing target variable is printed once, not twice."""
    import subprocess
    import sys

    import httpx

    from store import queries
    from store.db import run_in_transaction
    from tests.test_serve import free_port, wait_healthy
    from tests.test_undo_pins import sweep

    token = run_in_transaction(engine, lambda c: queries.create_token(c, "cli-admin", "admin"))
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "hpscale.cli", "serve", "--port", str(port), "--database-url", database_url],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        headers = {"Authorization": f"Bearer {token}"}
        assert httpx.post(f"{url}/v1/studies", json={"name": "s"}, headers=headers).status_code == 201
        assert httpx.post(f"{url}/v1/studies/s/runs", json={"runs": sweep()}, headers=headers).status_code == 201
        monkeypatch.delenv("HPSCALE_TOKEN", raising=False)
        assert main(["recommend", "--study", "s", "--url", url, "--n-params", "1e9"]) == 1
        err = capsys.readouterr().err
        assert "missing bearer token" in err and "hint:" in err and "HPSCALE_TOKEN" in err
        monkeypatch.setenv("HPSCALE_TOKEN", token)
        assert main(["recommend", "--study", "s", "--url", url, "--tokens", "2e10"]) == 1
        err = capsys.readouterr().err
        assert "missing target" in err and err.count("n_params") == 1, err
    finally:
        process.terminate()
        process.wait(timeout=30)
