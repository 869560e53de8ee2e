"""Issue 19, the second security review, in process (fast): the failed-auth limit never
locks out a valid token and covers /metrics; operator secrets are checked for entropy and
read from files; proxy headers are trusted only from named proxies; no-auth refuses
relayed requests; large bodies in flight are bounded per token; an existing SQLite file
is made private. Peer addresses are set through the ASGI scope (TestClient's `client`).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError
from sqlalchemy import Engine

from app.main import create_app
from app.security import LARGE_BODY_BYTES, MAX_FAILED_AUTH, MAX_LARGE_BODIES_PER_TOKEN, SecurityGate
from hpscale.cli import main as cli
from hpscale.cli import uvicorn_options
from service.entropy import estimated_entropy_bits
from service.errors import InvalidRuns
from service.runs import check_extra_keys, submit_runs, with_defaults
from service.schemas import RunIn, StudyIn
from service.settings import MIN_SECRET_BITS, Settings
from service.studies import create_study, find_study
from store import queries
from store.db import run_in_transaction
from tests.conftest import assert_error, bearer, make_run

ATTACKER = ("198.51.100.7", 4242)


def _bad() -> dict[str, str]:
    return bearer(f"hps_{secrets.token_urlsafe(32)}")


# --- the failed-auth limiter ------------------------------------------------------------------


def test_bad_tokens_never_lock_out_a_valid_one_from_the_same_address(
    database_url: str, engine: Engine, tokens: dict[str, str]
) -> None:
    app = create_app(Settings(database_url=database_url), engine=engine)
    with TestClient(app, client=ATTACKER) as client:
        statuses = [client.get("/v1/studies", headers=_bad()).status_code for _ in range(25)]
        assert statuses == [401] * MAX_FAILED_AUTH + [429] * (25 - MAX_FAILED_AUTH)
        # Only failed lookups are answered 429: a valid token is served, a valid token
        # without the scope is 403, and no token at all is 401, from the blocked address too.
        assert client.get("/v1/studies", headers=bearer(tokens["read"])).status_code == 200
        assert client.post("/v1/studies", json={"name": "x"}, headers=bearer(tokens["read"])).status_code == 403
        assert_error(client.get("/v1/studies"), 401, "unauthorized")
        assert_error(client.get("/v1/studies", headers=_bad()), 429, "too_many_requests")


def test_metrics_token_is_limited_like_other_tokens(database_url: str, engine: Engine, tmp_path: Path) -> None:
    secret = secrets.token_urlsafe(32)
    (tmp_path / "metrics-token").write_text(secret + "\n")
    settings = Settings(database_url=database_url, metrics_token_file=tmp_path / "metrics-token")
    assert settings.metrics_token is not None and settings.metrics_token.get_secret_value() == secret
    app = create_app(settings, engine=engine)
    with TestClient(app, client=ATTACKER) as client:
        statuses = [client.get("/metrics", headers=_bad()).status_code for _ in range(25)]
        assert statuses == [401] * MAX_FAILED_AUTH + [429] * (25 - MAX_FAILED_AUTH)
        assert client.get("/metrics", headers=bearer(secret)).status_code == 200
        assert client.get("/metrics").status_code == 401


@pytest.mark.parametrize("weak", ["scrape-secret-123", "0123456789abcdef0123456789abcdef0123456789a"])
def test_a_weak_metrics_token_stops_serve(weak: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValidationError, match="metrics token must be a random secret"):
        Settings(metrics_token=weak)
    (tmp_path / "weak").write_text(weak)
    assert cli(["serve", "--port", "1", "--metrics-token-file", str(tmp_path / "weak")]) == 2
    err = capsys.readouterr().err
    assert "HPSCALE_METRICS_TOKEN" in err and weak not in err


# --- operator secrets: a real entropy estimate -----------------------------------------------


@pytest.mark.parametrize(
    "weak",
    [
        "0123456789abcdef0123456789abcdef0123456789a",  # the review's example: 43 chars, 16 distinct
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",  # a run
        "hps_" + "Xy7!" * 12,  # a repeated word
        "a" * 64,
    ],
)
def test_predictable_bootstrap_tokens_are_refused(weak: str) -> None:
    assert estimated_entropy_bits(weak) < MIN_SECRET_BITS
    with pytest.raises(ValidationError, match="at least 43 characters"):
        Settings(bootstrap_admin_token=weak)


def test_random_tokens_pass_the_entropy_check() -> None:
    for _ in range(200):
        for token in (secrets.token_urlsafe(32), secrets.token_hex(32), "hps_" + secrets.token_urlsafe(32)):
            assert estimated_entropy_bits(token) > 1.5 * MIN_SECRET_BITS, token
            Settings(bootstrap_admin_token=token)


# --- proxies ----------------------------------------------------------------------------------


def test_proxy_headers_are_trusted_only_from_named_proxies() -> None:
    default = uvicorn_options(Settings())
    assert default["proxy_headers"] is False and default["http"] == "app.server:LimitedH11Protocol"
    assert default["limit_concurrency"] is None  # counted per request by app.server instead
    named = uvicorn_options(Settings(forwarded_allow_ips=" 10.0.0.5, 192.168.0.0/16 "))
    assert named["proxy_headers"] is True and named["forwarded_allow_ips"] == "10.0.0.5,192.168.0.0/16"
    with pytest.raises(ValidationError, match="not an IP address"):
        Settings(forwarded_allow_ips="10.0.0.5,proxy.internal")


def test_no_auth_refuses_requests_relayed_by_a_proxy(database_url: str, engine: Engine) -> None:
    app = create_app(Settings(database_url=database_url, no_auth=True), engine=engine)
    with TestClient(app, base_url="http://127.0.0.1:8000", client=("127.0.0.1", 5000)) as client:
        assert client.get("/v1/studies").status_code == 200
        for header in ("X-Forwarded-For", "Forwarded", "X-Real-IP"):
            refused = client.get("/v1/studies", headers={header: "203.0.113.9"})
            assert "relayed by a proxy" in assert_error(refused, 403, "forbidden")["message"]


# --- large bodies in flight per token ------------------------------------------------------------


def test_one_large_body_in_flight_per_token(database_url: str, engine: Engine, tokens: dict[str, str]) -> None:
    """The gate around a stand-in app that holds every request until released."""
    real = create_app(Settings(database_url=database_url), engine=engine)
    release = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await release.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    gate = SecurityGate(slow_app, settings=real.state.settings, engine=engine, router_app=real)

    async def post(token: str, size: int) -> int:
        status = 0

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]

        scope = {
            "type": "http",
            "method": "POST",
            "path": "/v1/studies/s/runs",
            "root_path": "",
            "query_string": b"",
            "headers": [
                (b"host", b"127.0.0.1"),
                (b"authorization", f"Bearer {token}".encode()),
                (b"content-length", str(size).encode()),
            ],
            "client": ("127.0.0.1", 1),
        }
        await gate(scope, receive, send)
        return status

    async def scenario() -> tuple[list[int], list[int]]:
        large = [asyncio.create_task(post(tokens["write"], LARGE_BODY_BYTES + 1)) for _ in range(3)]
        small = [asyncio.create_task(post(tokens["write"], 1000)), asyncio.create_task(post(tokens["admin"], 10**7))]
        await asyncio.sleep(0.2)
        release.set()
        return list(await asyncio.gather(*large)), list(await asyncio.gather(*small))

    large, others = asyncio.run(scenario())
    assert sorted(large) == [201] * MAX_LARGE_BODIES_PER_TOKEN + [429] * (3 - MAX_LARGE_BODIES_PER_TOKEN)
    assert others == [201, 201]  # small bodies, and another token's large one, are not held back


# --- SQLite files --------------------------------------------------------------------------------


def test_an_existing_world_readable_database_is_made_private(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'hp.db'}"
    assert cli(["db", "upgrade", "--database-url", url]) == 0
    for name in ("hp.db", "hp.db-wal", "hp.db-shm"):
        if (tmp_path / name).exists():
            os.chmod(tmp_path / name, 0o644)  # as an earlier version, or a copy, left it
    capsys.readouterr()
    assert cli(["db", "upgrade", "--database-url", url]) == 0
    assert stat.S_IMODE((tmp_path / "hp.db").stat().st_mode) == 0o600
    assert "was mode 0644; now 0600" in capsys.readouterr().err


# --- the per-study cap on extra keys holds under concurrent writers ----------------------------


def test_two_writers_cannot_both_pass_the_extra_key_cap(engine: Engine) -> None:
    """Each brings 300 new keys (alone within the cap of 512, together past it). The first
    holds its transaction open after its check; the second must wait and then be refused
    (before: both checked an empty study and both committed, 600 keys)."""
    create_study(engine, StudyIn(name="cap"), "test")
    study = find_study(engine, "cap")

    def runs(prefix: str) -> list[RunIn]:
        return [
            RunIn.model_validate(make_run(i, run_key=f"{prefix}{i}", extra={f"{prefix}{i}_{j}": j for j in range(150)}))
            for i in range(2)
        ]

    checked, release = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}

    def first(conn: Any) -> None:
        check_extra_keys(conn, study, runs("a"))
        queries.insert_runs(conn, study.id, [with_defaults(run, study) for run in runs("a")], "a")
        checked.set()
        assert release.wait(10)

    def second() -> None:
        try:
            outcome["second"] = submit_runs(engine, "cap", runs("b"), indexed=True, created_by="b")
        except InvalidRuns as error:
            outcome["second"] = error

    holder = threading.Thread(target=lambda: run_in_transaction(engine, first))
    holder.start()
    assert checked.wait(10)
    contender = threading.Thread(target=second)
    contender.start()
    time.sleep(0.5)
    assert contender.is_alive()  # waiting for the first writer's transaction
    release.set()
    holder.join(10)
    contender.join(10)
    assert isinstance(outcome["second"], InvalidRuns), outcome
    assert outcome["second"].details[0]["field"] == "extra"
    with engine.connect() as conn:
        assert len(queries.study_extra_keys(conn, study.id)) == 300


# --- requests in progress, not open connections, meet the 503 limit -----------------------------


def test_only_requests_in_progress_count_toward_the_concurrency_limit() -> None:
    from app.server import _requests_guard

    async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def call(tasks: set[object]) -> tuple[int, dict[bytes, bytes]]:
        sent: list[dict] = []

        async def receive() -> dict:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict) -> None:
            sent.append(message)

        await _requests_guard(app, tasks, 2)({"type": "http", "method": "GET", "path": "/healthz"}, receive, send)
        return sent[0]["status"], dict(sent[0]["headers"])

    # The running request is among the tasks: 2 in progress pass, a third is refused at once.
    assert asyncio.run(call({1, 2}))[0] == 200
    status, headers = asyncio.run(call({1, 2, 3}))
    assert status == 503 and headers[b"retry-after"] == b"1"
