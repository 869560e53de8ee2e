"""Issue 19: pinned fits expire. A study keeps its newest fits and, besides them, the pinned
fits an answer used within PIN_KEEP_DAYS, at most MAX_PINNED_FITS (least recently used go
first); `?fit_id=` of a pruned fit answers 410 saying why, an id that never existed 404.

The policy's numbers are made small here so that a handful of fits exercises it.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select, update

from service import pins
from store import queries
from store.db import run_in_transaction
from store.models import Fit, utcnow
from tests.conftest import assert_error
from tests.test_undo_pins import TARGET, make_study, sweep


@pytest.fixture
def small_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(queries, "KEEP_FITS", 1)
    monkeypatch.setattr(queries, "MAX_PINNED_FITS", 2)
    monkeypatch.setattr(pins, "USE_RESOLUTION_SECONDS", 0.0)  # every answer counts as a use


def _launch(client: TestClient, round_: int) -> int:
    """A launcher's round: a new run arrives, then a fresh recommendation (which pins its fit)."""
    assert client.post("/v1/studies/s/runs", json={**sweep(f"round{round_}")[0]}).status_code == 201
    answer = client.get("/v1/studies/s/recommendation", params={**TARGET, "fresh": "true"})
    assert answer.status_code == 200, answer.text
    return int(answer.json()["fit_id"])


def _stored_fit_ids(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return list(conn.execute(select(Fit.id).order_by(Fit.id)).scalars())


def _answer(client: TestClient, fit_id: int) -> int:
    return client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": fit_id}).status_code


def test_pins_beyond_the_policy_are_pruned_least_recently_used_first_and_answer_410(
    client: TestClient, engine: Engine, small_policy: None
) -> None:
    make_study(client)
    first = [_launch(client, i) for i in range(3)]  # three pinned fits: the newest + 2 pins
    assert _stored_fit_ids(engine) == first
    assert _answer(client, first[0]) == 200  # the oldest is used again: now the most recent use
    fourth = _launch(client, 3)
    # Kept: the newest, and the two most recently used pins (first[0] and first[2]).
    assert _stored_fit_ids(engine) == [first[0], first[2], fourth]
    gone = client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": first[1]})
    error = assert_error(gone, 410, "gone")
    assert f"fit {first[1]}" in error["message"] and "pinned fits" in error["message"]
    assert_error(client.get(f"/v1/studies/s/fits/{first[1]}"), 410, "gone")
    assert_error(client.get(f"/v1/studies/s/fits/{first[1]}/run-states"), 410, "gone")
    assert_error(client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": 99_999}), 404, "not_found")
    assert _answer(client, first[0]) == 200 and _answer(client, first[2]) == 200


def test_a_pin_unused_for_longer_than_the_policy_expires(
    client: TestClient, engine: Engine, small_policy: None
) -> None:
    make_study(client)
    old, recent = _launch(client, 0), _launch(client, 1)
    stale = utcnow() - timedelta(days=queries.PIN_KEEP_DAYS + 1)
    run_in_transaction(engine, lambda conn: conn.execute(update(Fit).where(Fit.id == old).values(pinned_at=stale)))
    newest = _launch(client, 2)
    assert _stored_fit_ids(engine) == [recent, newest]
    assert_error(client.get("/v1/studies/s/recommendation", params={**TARGET, "fit_id": old}), 410, "gone")


def test_the_record_of_pruned_fits_is_bounded(
    engine: Engine, client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(queries, "MAX_EXPIRED_FITS", 2)
    make_study(client)
    ids = [client.post("/v1/studies/s/fits", json={"bootstrap": b}).json()["id"] for b in (0, 10, 20, 50)]
    study_id = client.get("/v1/studies/s").json()["id"]
    assert run_in_transaction(engine, lambda conn: queries.prune_fits(conn, study_id, 1)) == 3
    with engine.connect() as conn:
        remembered = [queries.expired_fit(conn, study_id, fit_id) is not None for fit_id in ids]
    assert remembered == [False, True, True, False]  # the oldest record forgotten; the newest fit kept
