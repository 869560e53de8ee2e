"""The contract's health, studies and runs endpoints, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.main import create_app
from service.settings import Settings
from store.db import make_engine
from tests.conftest import assert_error, bearer, count_rows, make_run


def create_study(client: TestClient, name: str = "proxy", **fields: object) -> dict:
    response = client.post("/v1/studies", json={"name": name, **fields})
    assert response.status_code == 201, response.text
    return response.json()


# --- health --------------------------------------------------------------------------


def test_healthz_and_readyz_need_no_token(client: TestClient) -> None:
    anonymous = {"Authorization": ""}
    assert client.get("/healthz", headers=anonymous).json() == {"status": "ok"}
    ready = client.get("/readyz", headers=anonymous)
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"


def test_readyz_is_503_before_migrations(tmp_path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    engine = make_engine(url)
    with TestClient(create_app(Settings(database_url=url), engine=engine)) as client:
        response = client.get("/readyz")
    assert_error(response, 503, "unavailable")
    assert "hpscale db upgrade" in response.json()["error"]["message"]


# --- studies -------------------------------------------------------------------------


def test_create_show_list_study(client: TestClient) -> None:
    created = create_study(client, "gpt-mup", parameterization="mup", base_width=256, base_depth=4, seq_len=2048)
    assert created["parameterization"] == "mup" and created["base_width"] == 256
    assert created["optimizer"] == "adamw"
    shown = client.get("/v1/studies/gpt-mup").json()
    assert shown["run_count"] == 0 and shown["latest_fit_id"] is None
    assert [s["name"] for s in client.get("/v1/studies").json()["items"]] == ["gpt-mup"]


def test_duplicate_study_is_409(client: TestClient) -> None:
    create_study(client, "dup")
    assert_error(client.post("/v1/studies", json={"name": "dup"}), 409, "conflict")


@pytest.mark.parametrize(
    "body, field",
    [
        ({"name": "Bad Name"}, "name"),
        ({"name": "-starts-with-dash"}, "name"),
        ({"name": "x" * 65}, "name"),
        ({"name": "ok", "parameterization": "ntk"}, "parameterization"),
        ({"name": "ok", "base_width": 0}, "base_width"),
        ({"name": "ok", "surprise": 1}, "surprise"),
        ({}, "name"),
    ],
)
def test_invalid_study_is_422_naming_the_field(client: TestClient, body: dict, field: str) -> None:
    error = assert_error(client.post("/v1/studies", json=body), 422, "validation_error")
    assert field in [d["field"] for d in error["details"]]


def test_unknown_study_is_404_everywhere(client: TestClient) -> None:
    for response in (
        client.get("/v1/studies/nope"),
        client.get("/v1/studies/nope/runs"),
        client.get("/v1/studies/nope/runs.csv"),
        client.post("/v1/studies/nope/runs", json=make_run()),
    ):
        assert_error(response, 404, "not_found")


def test_auth_401_and_403(client: TestClient, tokens: dict[str, str]) -> None:
    create_study(client, "auth")
    assert_error(client.get("/v1/studies", headers={"Authorization": ""}), 401, "unauthorized")
    assert_error(client.get("/v1/studies", headers=bearer("hps_wrong")), 401, "unauthorized")
    assert_error(client.get("/v1/studies", headers={"Authorization": "Basic abc"}), 401, "unauthorized")
    read, write = bearer(tokens["read"]), bearer(tokens["write"])
    assert client.get("/v1/studies", headers=read).status_code == 200
    assert_error(client.post("/v1/studies", json={"name": "x"}, headers=read), 403, "forbidden")
    assert_error(client.post("/v1/studies", json={"name": "x"}, headers=write), 403, "forbidden")
    assert_error(client.post("/v1/studies/auth/runs", json=make_run(), headers=read), 403, "forbidden")
    assert client.post("/v1/studies/auth/runs", json=make_run(), headers=write).status_code == 201


# --- submitting runs -----------------------------------------------------------------


def test_single_run_is_stored_with_defaults(client: TestClient) -> None:
    create_study(client, "s", seq_len=2048)
    response = client.post(
        "/v1/studies/s/runs",
        json=make_run(0, run_key=None, weight_decay=None) | {"extra": {"warmup": 100, "schedule": "cosine"}},
    )
    assert response.status_code == 201, response.text
    assert response.json()["inserted"] == 1 and response.json()["duplicates"] == 0
    (run,) = client.get("/v1/studies/s/runs").json()["items"]
    assert run["id"] == response.json()["ids"][0]
    assert run["seq_len"] == 2048  # the study's default
    assert run["weight_decay"] == 0.0 and run["status"] == "completed"
    assert run["extra"] == {"warmup": 100.0, "schedule": "cosine"}
    assert run["created_at"].endswith("Z") or "+00:00" in run["created_at"]
    assert client.get("/v1/studies/s").json()["run_count"] == 1


def test_batch_is_atomic_and_422_names_index_and_field(client: TestClient, engine: Engine) -> None:
    create_study(client, "atomic")
    runs = [make_run(i) for i in range(50)]
    runs[17]["learning_rate"] = -1.0
    runs[31]["status"] = "exploded"
    del runs[40]["tokens"]
    error = assert_error(client.post("/v1/studies/atomic/runs", json={"runs": runs}), 422, "validation_error")
    by_index = {(d["index"], d["field"]) for d in error["details"]}
    assert by_index == {(17, "learning_rate"), (31, "status"), (40, "tokens")}
    assert "17" in error["message"]
    assert count_rows(engine) == 0


@pytest.mark.parametrize(
    "raw, field",
    [
        ('{"n_params": NaN, "tokens": 1, "learning_rate": 0.1, "batch_size": 1, "final_loss": 1}', "n_params"),
        ('{"n_params": 1, "tokens": Infinity, "learning_rate": 0.1, "batch_size": 1, "final_loss": 1}', "tokens"),
        ('{"n_params": 1, "tokens": 1, "learning_rate": 0.1, "batch_size": 1, "final_loss": -Infinity}', "final_loss"),
        ('{"n_params": 1, "tokens": 1, "learning_rate": 0.1, "batch_size": 1}', "final_loss"),
        ('{"n_params": 1, "tokens": 1, "learning_rate": 0.1, "batch_size": 1.5, "final_loss": 1}', "batch_size"),
        (
            '{"n_params": 1, "tokens": 1, "learning_rate": 0.1, "batch_size": 1, "final_loss": 1, "width": 99999999999}',
            "width",
        ),
        (
            '{"n_params": 1, "tokens": 1, "learning_rate": 0.1, "batch_size": 1, "final_loss": 1, "run_key": "a\\u0000b"}',
            "run_key",
        ),
        (
            '{"n_params": 1, "tokens": 1, "learning_rate": 0.1, "batch_size": 1, "final_loss": 1, "extra": {"x": [1]}}',
            "extra.x",
        ),
        (
            '{"n_params": 1, "tokens": 1, "learning_rate": 0.1, "batch_size": 1, "final_loss": 1, "loss_curve": [[1, 2, 3]]}',
            "loss_curve.0",
        ),
        ('{"n_params": 1, "tokens": 1, "learning_rate": 0.1, "batch_size": 1, "final_loss": 1, "seed": 1e30}', "seed"),
        ('{"runs": []}', "runs"),
        ("[1, 2]", "body"),
        ("{not json", "body"),
    ],
)
def test_bad_run_is_422_naming_field_and_nothing_stored(
    client: TestClient, engine: Engine, raw: str, field: str
) -> None:
    create_study(client, "bad")
    response = client.post("/v1/studies/bad/runs", content=raw, headers={"Content-Type": "application/json"})
    error = assert_error(response, 422, "validation_error")
    assert any(d["field"].startswith(field) for d in error["details"]), error
    assert count_rows(engine) == 0


def test_diverged_run_needs_no_loss(client: TestClient) -> None:
    create_study(client, "div")
    response = client.post("/v1/studies/div/runs", json=make_run(0, final_loss=None, status="diverged"))
    assert response.status_code == 201, response.text


def test_more_than_10000_runs_is_422(client: TestClient, engine: Engine) -> None:
    create_study(client, "big")
    runs = [make_run(i) for i in range(10_001)]
    error = assert_error(client.post("/v1/studies/big/runs", json={"runs": runs}), 422, "validation_error")
    assert error["details"][0]["field"] == "runs"
    assert count_rows(engine) == 0


def test_retries_are_idempotent_by_run_key(client: TestClient, engine: Engine) -> None:
    create_study(client, "idem")
    first = client.post("/v1/studies/idem/runs", json={"runs": [make_run(i) for i in range(10)]}).json()
    version = client.get("/v1/studies/idem").json()["data_version"]
    again = client.post("/v1/studies/idem/runs", json={"runs": [make_run(i) for i in range(10)]}).json()
    # Each submission gets its own id (contract 1.1), even one that stores nothing.
    assert again == {
        "inserted": 0,
        "duplicates": 10,
        "replaced": 0,  # contract 1.2: only a stored `failed` run is replaced by a retry
        "ids": first["ids"],
        "submission_id": first["submission_id"] + 1,
    }
    assert client.get("/v1/studies/idem").json()["data_version"] == version  # nothing changed
    mixed = client.post(
        "/v1/studies/idem/runs", json={"runs": [make_run(5), make_run(10), make_run(10), make_run(11, run_key=None)]}
    ).json()
    assert mixed["inserted"] == 2 and mixed["duplicates"] == 2
    assert mixed["ids"][0] == first["ids"][5] and mixed["ids"][1] == mixed["ids"][2]
    assert len(set(mixed["ids"])) == 3
    assert count_rows(engine) == 12
    assert client.get("/v1/studies/idem").json()["data_version"] != version


def test_same_run_key_in_two_studies_is_two_runs(client: TestClient) -> None:
    create_study(client, "a")
    create_study(client, "b")
    ids_a = client.post("/v1/studies/a/runs", json=make_run(1)).json()["ids"]
    ids_b = client.post("/v1/studies/b/runs", json=make_run(1)).json()["ids"]
    assert ids_a != ids_b


# --- listing -------------------------------------------------------------------------


def test_paging_visits_every_run_once_with_filters(client: TestClient) -> None:
    create_study(client, "page")
    runs = [make_run(i, status="diverged", final_loss=None) if i % 5 == 0 else make_run(i) for i in range(237)]
    ids = client.post("/v1/studies/page/runs", json={"runs": runs}).json()["ids"]

    def walk(**params: object) -> list[dict]:
        seen, cursor = [], None
        while True:
            query = {"limit": 50, **params} | ({"cursor": cursor} if cursor else {})
            body = client.get("/v1/studies/page/runs", params=query).json()
            assert len(body["items"]) <= 50
            seen.extend(body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                return seen

    everything = walk()
    assert [r["id"] for r in everything] == ids
    diverged = walk(status="diverged")
    assert [r["id"] for r in diverged] == [ids[i] for i in range(237) if i % 5 == 0]
    wide = walk(width=1024, status="completed")
    expected = [ids[i] for i in range(237) if i % 3 == 1 and i % 5 != 0]
    assert [r["id"] for r in wide] == expected
    assert walk(depth=9) == []


@pytest.mark.parametrize(
    "params, field",
    [
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"cursor": "garbage!"}, "cursor"),
        ({"cursor": "cnVuOi0x"}, "cursor"),
        ({"status": "weird"}, "status"),
        ({"width": -3}, "width"),
    ],
)
def test_bad_listing_query_is_422(client: TestClient, params: dict, field: str) -> None:
    create_study(client, "q")
    error = assert_error(client.get("/v1/studies/q/runs", params=params), 422, "validation_error")
    assert error["details"][0]["field"] == field


# --- CSV -----------------------------------------------------------------------------


def test_csv_export_has_one_column_per_field(client: TestClient) -> None:
    create_study(client, "csv")
    run = make_run(3, extra={"warmup": 200, "sched": "wsd"}, loss_curve=[[1e6, 5.0], [2e6, 4.5]], seed=7)
    client.post("/v1/studies/csv/runs", json=run)
    response = client.get("/v1/studies/csv/runs.csv")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    (row,) = list(csv.DictReader(io.StringIO(response.text)))
    assert float(row["learning_rate"]) == run["learning_rate"]
    assert row["extra.warmup"] == "200.0" and row["extra.sched"] == "wsd"
    assert json.loads(row["loss_curve"]) == [[1e6, 5.0], [2e6, 4.5]]
    assert row["seed"] == "7" and row["run_key"] == "run-3"
