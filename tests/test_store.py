"""Store and migrations: the schema Alembic builds is the one the models declare."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Engine, func, inspect, select

from store import migrate, queries
from store.db import run_in_transaction
from store.models import Base, Run, RunCurve, Study


def test_migrations_match_models(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_upgrade_is_idempotent(engine: Engine) -> None:
    migrate.upgrade(engine)
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_run_key_unique_per_study_and_indexes_exist(engine: Engine) -> None:
    inspector = inspect(engine)
    uniques = {tuple(u["column_names"]) for u in inspector.get_unique_constraints("runs")}
    assert ("study_id", "run_key") in uniques
    indexes = {tuple(i["column_names"]) for i in inspector.get_indexes("runs")}
    assert {("study_id", "id"), ("study_id", "status", "id"), ("study_id", "width", "id")} <= indexes


def test_sqlite_pragmas(engine: Engine) -> None:
    if engine.dialect.name != "sqlite":
        pytest.skip("SQLite-only: PostgreSQL has no pragmas")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def _study(engine: Engine, name: str = "s") -> Study:
    study = run_in_transaction(
        engine, lambda c: queries.create_study(c, {"name": name, "parameterization": "sp", "optimizer": "adamw"}, None)
    )
    assert study is not None
    return study


def _run(key: str | None, lr: float = 1e-3) -> dict:
    return {
        "run_key": key,
        "n_params": 1e8,
        "tokens": 1e9,
        "learning_rate": lr,
        "batch_size": 32,
        "weight_decay": 0.0,
        "status": "completed",
        "final_loss": 3.0,
    }


def test_insert_runs_ids_follow_input_order(engine: Engine) -> None:
    study = _study(engine)
    runs = [_run(None if i % 3 == 0 else f"k{i}", lr=1e-3 * (i + 1)) for i in range(30)]
    result = run_in_transaction(engine, lambda c: queries.insert_runs(c, study.id, runs, "me"))
    assert result.inserted == 30 and result.duplicates == 0
    with engine.connect() as conn:
        lr_by_id = dict(conn.execute(select(Run.id, Run.learning_rate)).all())
    assert [lr_by_id[i] for i in result.ids] == [r["learning_rate"] for r in runs]


def test_failed_transaction_stores_nothing(engine: Engine) -> None:
    study = _study(engine)

    def insert_then_fail(conn) -> None:  # type: ignore[no-untyped-def]
        queries.insert_runs(conn, study.id, [_run(f"k{i}") for i in range(100)], None)
        raise RuntimeError("crash after the insert, before commit")

    with pytest.raises(RuntimeError, match="crash after the insert"):
        run_in_transaction(engine, insert_then_fail)
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(Run)).scalar_one() == 0
        assert conn.execute(select(Study.data_version)).scalar_one() == 0


def test_token_hash_is_not_the_token(engine: Engine) -> None:
    token = run_in_transaction(engine, lambda c: queries.create_token(c, "t", "read"))
    with engine.connect() as conn:
        (stored,) = queries.list_tokens(conn)
        assert stored.token_hash != token and token not in stored.token_hash
        assert queries.find_token(conn, token).name == "t"  # type: ignore[union-attr]
        assert queries.find_token(conn, token + "x") is None
    assert run_in_transaction(engine, lambda c: queries.revoke_token(c, "t"))
    with engine.connect() as conn:
        assert queries.find_token(conn, token) is None


def test_absent_json_values_are_sql_null(engine: Engine) -> None:
    study = _study(engine)
    run_in_transaction(engine, lambda c: queries.insert_runs(c, study.id, [_run("a")], None))
    with engine.connect() as conn:
        nulls = conn.execute(select(func.count()).select_from(Run).where(Run.extra.is_(None))).scalar_one()
        curves = conn.execute(select(func.count()).select_from(RunCurve)).scalar_one()
    assert nulls == 1 and curves == 0  # no curve: no run_curves row
