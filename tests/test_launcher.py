"""What a training launcher does, against a real multi-worker `hpscale serve`: the Python
client, `hpscale recommend`, and 20 simultaneous requests on stale data fitting once."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from sqlalchemy import Engine

from hpscale.cli import main
from hpscale.client import Client, HpscaleError, content_run_key
from store import queries
from store.db import run_in_transaction
from store.models import Fit, Run
from tests.conftest import count_rows, steplaw_import_argv
from tests.test_serve import free_port, serve_argv, wait_healthy

pytestmark = pytest.mark.slow  # starts servers or a browser

TARGET = {"n_params": 7e9, "tokens": 1.4e12, "width": 4096, "depth": 32}


@pytest.fixture
def server(database_url: str, engine: Engine) -> Iterator[tuple[str, dict[str, str]]]:
    """A 2-worker server on the test database holding the Step Law study, and tokens by scope."""
    assert main(steplaw_import_argv(database_url)) == 0
    tokens = {
        s: run_in_transaction(engine, lambda c, s=s: queries.create_token(c, f"launcher-{s}", s))
        for s in ("read", "write", "admin")
    }
    port = free_port()
    process = subprocess.Popen(
        serve_argv(database_url, port, workers=2),
        env={**os.environ, "HPSCALE_BOOTSTRAP": "40"},
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process)
        yield url, tokens
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_twenty_concurrent_requests_on_stale_data_fit_once(server, engine: Engine) -> None:
    url, tokens = server
    headers = {"Authorization": f"Bearer {tokens['read']}"}

    def ask(_: int) -> httpx.Response:
        return httpx.get(f"{url}/v1/studies/steplaw/recommendation", params=TARGET, headers=headers, timeout=300)

    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(ask, range(20)))
    assert [r.status_code for r in responses] == [200] * 20, [r.text[:200] for r in responses if r.status_code != 200]
    assert len({r.json()["fit_id"] for r in responses}) == 1
    assert count_rows(engine, Fit) == 1


def test_python_client_submits_idempotently_and_recommends(server, engine: Engine) -> None:
    url, tokens = server
    with Client(url, tokens["admin"]) as admin:
        admin.create_study("launch", seq_len=4096)
        assert admin.create_study("launch", exist_ok=True)["name"] == "launch"
        with pytest.raises(HpscaleError) as raised:
            admin.create_study("launch")
        assert raised.value.status_code == 409 and raised.value.code == "conflict"
    runs = [
        {"n_params": 1e8, "tokens": 2e9, "learning_rate": 1e-3 * (i + 1), "batch_size": 64, "final_loss": 3.0 + i / 100}
        for i in range(12)
    ]
    with Client(url, tokens["write"]) as writer:
        first = writer.submit("launch", runs)
        again = writer.submit("launch", runs)  # a retried script: nothing stored twice
        assert first["inserted"] == 12 and again["inserted"] == 0 and again["duplicates"] == 12
        assert again["ids"] == first["ids"] and again["submission_ids"] != first["submission_ids"]
        assert content_run_key(runs[0]) == content_run_key(dict(runs[0]))
        with pytest.raises(HpscaleError) as raised:
            writer.submit(
                "launch", [{"n_params": -1, "tokens": 1, "learning_rate": 1, "batch_size": 1, "final_loss": 1}]
            )
        assert raised.value.status_code == 422 and raised.value.details[0]["field"] == "n_params"
        rec = writer.recommend("steplaw", **TARGET, batch_multiple=256)
        assert rec["batch_size"]["value"] % 256 == 0
        assert rec["learning_rate"]["low"] <= rec["learning_rate"]["value"] <= rec["learning_rate"]["high"]
        with pytest.raises(HpscaleError) as raised:
            writer.recommend("steplaw", n_params=7e9)
        assert raised.value.status_code == 422 and raised.value.details[0]["field"] == "tokens"
        assert len(list(writer.runs("launch", page_size=5))) == 12
    with Client(url, "hps_not-a-token") as stranger, pytest.raises(HpscaleError) as raised:
        stranger.studies()
    assert raised.value.status_code == 401
    assert count_rows(engine, Run) == 1746 + 12


def test_recommend_command_prints_a_table_and_json(server, capsys) -> None:
    url, tokens = server
    argv = [
        "recommend",
        "--study",
        "steplaw",
        "--n-params",
        "7e9",
        "--tokens",
        "1.4e12",
        "--width",
        "4096",
        "--depth",
        "32",
        "--url",
        url,
        "--token",
        tokens["read"],
    ]
    assert main(argv) == 0
    table = capsys.readouterr().out
    assert "learning_rate" in table and "90% [" in table and "step_law" in table and "extrapolation:" in table
    assert main([*argv, "--json"]) == 0
    assert '"learning_rate"' in capsys.readouterr().out
    assert main(["recommend", "--study", "steplaw", "--n-params", "7e9", "--url", url, "--token", tokens["read"]]) == 1
    assert "tokens" in capsys.readouterr().err
    assert main(["recommend", "--study", "steplaw", "--url", "http://127.0.0.1:9", "--token", "x"]) == 1
