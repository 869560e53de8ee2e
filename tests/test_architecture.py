"""The layering rules of ARCHITECTURE.md, checked over the source tree (so they stay true).

- nothing outside `app/` imports `app`; nothing outside `app/` imports fastapi or starlette;
- SQLAlchemy is used only in `store/` (and its Alembic `migrations/`);
- nothing outside `tests/` imports `tests`;
- `hpscale/client.py` imports nothing of the server;
- every domain exception has exactly one HTTP status.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from service import errors

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "service", "store", "migrations", "fitting", "hpscale", "bench", "tests")
SERVER_PACKAGES = ("app", "service", "store", "migrations", "fitting")


def imported_modules(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def sources(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def violations(packages: tuple[str, ...], forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for package in packages:
        for path in sources(package):
            for module in imported_modules(path):
                if module.split(".")[0] in forbidden:
                    found.append(f"{path.relative_to(ROOT)} imports {module}")
    return found


def test_the_tree_has_the_packages_the_rules_speak_of() -> None:
    for package in ("app", "service", "store", "fitting", "hpscale"):
        assert sources(package), package


def test_nothing_outside_app_imports_app() -> None:
    assert violations(("hpscale", "fitting", "store", "migrations", "service", "bench"), ("app",)) == []


def test_web_frameworks_only_in_app() -> None:
    others = ("hpscale", "fitting", "store", "migrations", "service", "bench")
    assert violations(others, ("fastapi", "starlette")) == []


def test_sqlalchemy_only_in_store() -> None:
    assert violations(("app", "service", "hpscale", "fitting", "bench"), ("sqlalchemy", "alembic")) == []


def test_nothing_outside_tests_imports_tests() -> None:
    assert violations(("app", "service", "store", "migrations", "fitting", "hpscale", "bench"), ("tests",)) == []


def test_inner_layers_do_not_import_outer_ones() -> None:
    assert violations(("store", "migrations"), ("service", "hpscale", "fitting")) == []
    assert violations(("fitting",), ("service", "hpscale", "store")) == []
    assert violations(("service",), ("hpscale",)) == []


def test_client_imports_nothing_server_side() -> None:
    modules = imported_modules(ROOT / "hpscale" / "client.py")
    assert not [m for m in modules if m.split(".")[0] in (*SERVER_PACKAGES, "hpscale", "pydantic")], modules


def test_callbacks_import_only_the_client_and_the_frameworks() -> None:
    """Training jobs import hpscale/callbacks.py: nothing of the server may come with it."""
    modules = imported_modules(ROOT / "hpscale" / "callbacks.py")
    ours = [m for m in modules if m.split(".")[0] in (*SERVER_PACKAGES, "hpscale", "pydantic")]
    assert ours == ["hpscale.client"], modules


def domain_exceptions() -> list[type[errors.DomainError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.DomainError) and cls is not errors.DomainError and cls.__module__ == errors.__name__
    ]


def test_every_domain_exception_has_exactly_one_http_status() -> None:
    from app.errors import HTTP_STATUS

    classes = domain_exceptions()
    assert len(classes) >= 10
    unmapped = [cls.__name__ for cls in classes if cls not in HTTP_STATUS]
    assert unmapped == [], f"domain exceptions without an HTTP status: {unmapped}"
    # A dict holds one status per class; nothing else may be in it (no stale entries).
    assert set(HTTP_STATUS) == set(classes)
    for cls, status in HTTP_STATUS.items():
        assert 400 <= status < 600 and cls.code, cls
        assert (status == 422) == issubclass(cls, errors.InvalidInput), cls


@pytest.mark.parametrize("cls", domain_exceptions(), ids=lambda cls: cls.__name__)
def test_every_domain_exception_renders_the_contract_error_body(cls: type[errors.DomainError]) -> None:
    import json

    from app.errors import HTTP_STATUS, domain_error_response

    error = cls("x")  # type: ignore[call-arg]  # each takes a message, name or variable first
    response = domain_error_response(error)
    assert response.status_code == HTTP_STATUS[cls]
    body = json.loads(response.body)
    assert set(body["error"]) == {"code", "message", "details"} and body["error"]["code"] == cls.code
    assert body["error"]["message"]


def test_cli_exit_codes_follow_the_documented_rule(tmp_path: Path) -> None:
    """2 for a command line or argument the service cannot use (a 422 over HTTP, except bad
    rows), 1 for everything else it refuses — checked per class and through real commands."""
    from hpscale.cli import exit_code, main

    for cls in domain_exceptions():
        usage = issubclass(cls, errors.InvalidInput) and cls is not errors.InvalidRuns
        assert exit_code(cls("x")) == (2 if usage else 1), cls  # type: ignore[call-arg]
    url = ["--database-url", f"sqlite:///{tmp_path / 'cli.db'}"]
    assert main(["db", "upgrade", *url]) == 0
    bad = tmp_path / "bad.csv"
    bad.write_text("n_params,tokens,learning_rate,batch_size,final_loss\n1e8,2e9,-1,32,3.0\n", encoding="utf-8")
    assert main(["import", str(bad), "--study", "s", "--create", *url]) == 1  # InvalidRuns: a bad row
    assert main(["import", str(tmp_path / "absent.csv"), "--study", "s", "--create", *url]) == 2  # InvalidArgument
    assert main(["export", "--study", "absent", "-o", str(tmp_path / "x.csv"), *url]) == 1  # StudyNotFound
    assert main(["tokens", "create", "--scope", "read", "--name", "twice", *url]) == 0
    assert main(["tokens", "create", "--scope", "read", "--name", "twice", *url]) == 1  # TokenExists


def test_routers_do_not_turn_arbitrary_errors_into_4xx() -> None:
    """Only domain exceptions become 4xx: no router catches ValueError (or anything) itself."""
    for path in sources("app"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ExceptHandler) and path.parent.name == "routers":
                pytest.fail(f"{path.relative_to(ROOT)}:{node.lineno} catches an exception in a router")
