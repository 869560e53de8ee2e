"""Exclusion, undo and pinned answers (contract 1.1), over HTTP on SQLite and PostgreSQL.

Exclude → the next fit's n_runs drops by one and the recommendation changes; include →
it changes back; DELETE of a submission removes exactly its runs; every change is audited
and changes data_version; `fit_id=` answers are byte-identical before and after new runs.
"""

from __future__ import annotations

import math

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from service import undo
from store import queries
from store.db import run_in_transaction
from store.models import Fit, Run
from tests.conftest import assert_error, bearer, count_rows

TARGET = {"n_params": 1e9, "tokens": 2e10, "width": 2048, "depth": 8}


def sweep(prefix: str = "r", widths: tuple[int, ...] = (256, 512, 1024)) -> list[dict[str, object]]:
    """A small learning-rate sweep per width whose optimum moves as 1/width (fits in ~50 ms)."""
    runs: list[dict[str, object]] = []
    for width in widths:
        n_params = 12 * 8 * width * width
        for step in range(7):
            lr = 1e-3 * 2 ** (step - 3) * 512 / width
            loss = 3.0 + 0.05 * math.log2(lr * width / 512 / 1e-3) ** 2
            runs.append(
                {
                    "run_key": f"{prefix}-{width}-{step}",
                    "n_params": n_params,
                    "tokens": 20 * n_params,
                    "width": width,
                    "depth": 8,
                    "learning_rate": lr,
                    "batch_size": 64,
                    "final_loss": loss,
                }
            )
    return runs


def make_study(client: TestClient, name: str = "s") -> dict:
    assert client.post("/v1/studies", json={"name": name}).status_code == 201
    response = client.post(f"/v1/studies/{name}/runs", json={"runs": sweep()})
    assert response.status_code == 201, response.text
    return response.json()


def version(client: TestClient, name: str = "s") -> str:
    return client.get(f"/v1/studies/{name}").json()["data_version"]


def test_every_submission_has_an_id_recorded_on_its_runs(client: TestClient) -> None:
    first = make_study(client)
    assert isinstance(first["submission_id"], int) and first["inserted"] == 21
    single = client.post("/v1/studies/s/runs", json={**sweep("x")[0]}).json()
    assert single["submission_id"] > first["submission_id"] and single["inserted"] == 1
    again = client.post("/v1/studies/s/runs", json={"runs": sweep()}).json()
    assert again["inserted"] == 0 and again["submission_id"] > single["submission_id"]
    items = client.get("/v1/studies/s/runs", params={"limit": 1000}).json()["items"]
    assert {item["submission_id"] for item in items} == {first["submission_id"], single["submission_id"]}
    assert all(item["excluded"] is False and item["excluded_reason"] is None for item in items)


def test_exclude_and_include_move_the_fit_and_are_audited(client: TestClient, tokens: dict[str, str]) -> None:
    make_study(client)
    before = client.post("/v1/studies/s/fits").json()
    answer = client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": before["id"]}).json()
    assert before["n_runs"] == 21
    # The best run at width 512: leaving it out moves that scale's optimum.
    best = next(i for i in client.get("/v1/studies/s/runs").json()["items"] if i["run_key"] == "r-512-3")
    v0 = version(client)
    excluded = client.post(
        f"/v1/studies/s/runs/{best['id']}/exclude", json={"reason": "node failure"}, headers=bearer(tokens["write"])
    )
    assert excluded.status_code == 200, excluded.text
    assert excluded.json()["excluded"] is True and excluded.json()["excluded_reason"] == "node failure"
    v1 = version(client)
    assert v1 != v0
    listed = client.get("/v1/studies/s/runs", params={"excluded": "true"}).json()["items"]
    assert [item["id"] for item in listed] == [best["id"]]
    assert len(client.get("/v1/studies/s/runs", params={"excluded": "false", "limit": 100}).json()["items"]) == 20
    after = client.post("/v1/studies/s/fits").json()
    assert after["n_runs"] == 20 and after["data_version"] == v1
    changed = client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": after["id"]}).json()
    assert changed["learning_rate"] != answer["learning_rate"]

    included = client.post(f"/v1/studies/s/runs/{best['id']}/include", headers=bearer(tokens["write"]))
    assert included.status_code == 200 and included.json()["excluded"] is False
    assert version(client) not in (v0, v1)
    refit = client.post("/v1/studies/s/fits").json()
    assert refit["n_runs"] == 21
    back = client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": refit["id"]}).json()
    assert back["learning_rate"] == answer["learning_rate"]

    audit = [a for a in client.get("/v1/studies/s/audit").json()["items"] if a["action"] != "submit"]
    assert [(a["action"], a["run_id"], a["actor"]) for a in audit] == [
        ("include", best["id"], "test-write"),
        ("exclude", best["id"], "test-write"),
    ]
    assert audit[1]["reason"] == "node failure" and audit[1]["created_at"]


def test_exclusion_refusals(client: TestClient, tokens: dict[str, str]) -> None:
    make_study(client)
    run_id = client.get("/v1/studies/s/runs").json()["items"][0]["id"]
    error = assert_error(
        client.post(f"/v1/studies/s/runs/{run_id}/exclude", json={"reason": "  "}), 422, "validation_error"
    )
    assert error["details"][0]["field"] == "reason"
    error = assert_error(client.post(f"/v1/studies/s/runs/{run_id}/exclude", json={}), 422, "validation_error")
    assert error["details"][0]["field"] == "reason"
    assert_error(client.post("/v1/studies/s/runs/99999/exclude", json={"reason": "x"}), 404, "not_found")
    assert_error(client.post("/v1/studies/nope/runs/1/exclude", json={"reason": "x"}), 404, "not_found")
    reader = bearer(tokens["read"])
    assert_error(
        client.post(f"/v1/studies/s/runs/{run_id}/exclude", json={"reason": "x"}, headers=reader), 403, "forbidden"
    )
    assert client.get("/v1/studies/s/runs", params={"excluded": "maybe"}).status_code == 422
    assert [a["action"] for a in client.get("/v1/studies/s/audit").json()["items"]] == ["submit"]


def test_deleting_a_submission_removes_exactly_its_runs(
    client: TestClient, engine: Engine, tokens: dict[str, str]
) -> None:
    first = make_study(client)
    bad = client.post("/v1/studies/s/runs", json={"runs": sweep("bad", widths=(2048,))}).json()
    # A later submission meeting the bad one's keys stores nothing of its own.
    assert client.post("/v1/studies/s/runs", json={"runs": sweep("bad", widths=(2048,))}).json()["inserted"] == 0
    assert count_rows(engine) == 28
    v0 = version(client)
    writer = bearer(tokens["write"])
    assert_error(client.delete(f"/v1/studies/s/submissions/{bad['submission_id']}", headers=writer), 403, "forbidden")
    response = client.delete(f"/v1/studies/s/submissions/{bad['submission_id']}")
    assert response.status_code == 200 and response.json() == {"deleted": 7}
    assert version(client) != v0
    remaining = client.get("/v1/studies/s/runs", params={"limit": 100}).json()["items"]
    assert sorted(r["id"] for r in remaining) == sorted(first["ids"])
    # Undoing it again says so (409), with when and by whom, and records nothing more.
    again = assert_error(client.delete(f"/v1/studies/s/submissions/{bad['submission_id']}"), 409, "conflict")
    assert "already undone" in again["message"] and "test-admin" in again["message"] and "7 runs" in again["message"]
    assert_error(client.delete("/v1/studies/s/submissions/12345"), 404, "not_found")
    audit = client.get("/v1/studies/s/audit").json()["items"]  # newest first
    assert [(a["action"], a["submission_id"], a["count"]) for a in audit] == [
        ("delete_submission", bad["submission_id"], 7),
        ("submit", bad["submission_id"], 7),
        ("submit", first["submission_id"], 21),
    ]


def test_deleting_a_study_takes_its_runs_and_fits_and_is_audited(
    client: TestClient, engine: Engine, tokens: dict[str, str]
) -> None:
    make_study(client)
    make_study(client, "other")
    client.post("/v1/studies/s/fits")
    assert_error(client.delete("/v1/studies/s", headers=bearer(tokens["write"])), 403, "forbidden")
    response = client.delete("/v1/studies/s")
    assert response.status_code == 204 and response.content == b""
    assert_error(client.get("/v1/studies/s"), 404, "not_found")
    assert_error(client.delete("/v1/studies/s"), 404, "not_found")
    assert count_rows(engine) == 21 and count_rows(engine, Fit) == 0
    with engine.connect() as conn:
        assert set(conn.execute(select(Run.run_key)).scalars()) == {r["run_key"] for r in sweep()}
    record = undo.audit_log(engine, "s")
    assert [(r.action, r.count, r.actor) for r in record] == [
        ("delete_study", 21, "test-admin"),
        ("submit", 21, "test-admin"),  # the submission that stored them, kept after the study went
    ]
    # The name can be used again, from scratch.
    make_study(client)
    assert client.get("/v1/studies/s").json()["run_count"] == 21


def test_pinned_answers_are_byte_identical_after_new_runs(client: TestClient, engine: Engine) -> None:
    make_study(client)
    first = client.get("/v1/studies/s/recommendation", params=TARGET)
    assert first.status_code == 200
    fit_id = first.json()["fit_id"]
    pinned = client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": fit_id})
    assert pinned.content == first.content
    client.post("/v1/studies/s/runs", json={"runs": sweep("late", widths=(2048,))})
    client.post("/v1/studies/s/fits")
    again = client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": fit_id})
    assert again.status_code == 200 and again.content == first.content
    assert client.post("/v1/studies/s/fits").json()["id"] != fit_id
    with engine.connect() as conn:
        assert conn.execute(select(Fit.pinned).where(Fit.id == fit_id)).scalar_one() is True
    assert_error(client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": 99999}), 404, "not_found")
    assert client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": 0}).status_code == 422


@pytest.mark.slow  # 23 fits
def test_old_fits_are_pruned_but_pinned_ones_stay(engine: Engine, client: TestClient) -> None:
    make_study(client)
    pinned = client.get("/v1/studies/s/recommendation", params=TARGET).json()["fit_id"]
    study_id = client.get("/v1/studies/s").json()["id"]
    for i in range(queries.KEEP_FITS + 3):
        client.post("/v1/studies/s/runs", json={**sweep(f"n{i}")[0]})
        assert client.post("/v1/studies/s/fits").status_code == 201
    with engine.connect() as conn:
        ids = conn.execute(select(Fit.id).where(Fit.study_id == study_id).order_by(Fit.id)).scalars().all()
    assert len(ids) == queries.KEEP_FITS + 1 and ids[0] == pinned
    assert client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": pinned}).status_code == 200
    run_in_transaction(engine, lambda conn: queries.prune_fits(conn, study_id, 1))
    with engine.connect() as conn:
        assert conn.execute(select(Fit.id).where(Fit.study_id == study_id)).scalars().all() == [pinned, ids[-1]]
