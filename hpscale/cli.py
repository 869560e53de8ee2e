"""The `hpscale` command: serve, db upgrade, import/export CSV, tokens."""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from pydantic import TypeAdapter, ValidationError

from hpscale.config import Settings

DEFAULT_IMPORT_BATCH = 5_000


def _database_url(args: argparse.Namespace) -> str:
    return args.database_url or Settings.from_env().database_url


def _engine(args: argparse.Namespace, *, upgrade: bool = True):  # type: ignore[no-untyped-def]
    from store import migrate
    from store.db import make_engine

    engine = make_engine(_database_url(args))
    if upgrade:
        migrate.upgrade(engine)
    return engine


def is_loopback(host: str) -> bool:
    """True when `host` resolves only to loopback addresses (where --no-auth is allowed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            infos = socket.getaddrinfo(host, None)
        except socket.gaierror:
            return False
        return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


# --- serve / db ----------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    args.no_auth = args.no_auth or Settings.from_env().auth_enabled is False
    if args.no_auth and not is_loopback(args.host):
        print(
            f"error: --no-auth is only allowed on a loopback address, not {args.host!r}; "
            "create a token with 'hpscale tokens create --scope admin' instead",
            file=sys.stderr,
        )
        return 2
    url = _database_url(args)
    # Each request's fit is small linear algebra: BLAS thread pools in every worker would
    # only oversubscribe the cores (seen: 8-10x slower fits under load). Set before numpy loads.
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    os.environ["HPSCALE_DATABASE_URL"] = url
    os.environ["HPSCALE_NO_AUTH"] = "1" if args.no_auth else "0"
    engine = _engine(args)
    _bootstrap_admin_token(engine)
    engine.dispose()
    print(f"hpscale: serving http://{args.host}:{args.port} on {_redact(url)}", file=sys.stderr)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
    )
    return 0


def _redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def _bootstrap_admin_token(engine) -> None:  # type: ignore[no-untyped-def]
    """Register HPSCALE_BOOTSTRAP_ADMIN_TOKEN (a container's first admin) if it is set."""
    token = os.environ.get("HPSCALE_BOOTSTRAP_ADMIN_TOKEN")
    if not token:
        return
    from store import queries
    from store.db import run_in_transaction

    def register(conn) -> None:  # type: ignore[no-untyped-def]
        if queries.find_token(conn, token) is None and not queries.token_name_exists(conn, "bootstrap-admin"):
            queries.create_token(conn, "bootstrap-admin", "admin", token=token)

    run_in_transaction(engine, register)


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from store import migrate

    engine = _engine(args, upgrade=False)
    migrate.upgrade(engine)
    with engine.connect() as conn:
        print(f"database at revision {migrate.current_revision(conn)}")
    return 0


# --- import / export -----------------------------------------------------------------


def _progress(done: int, total: int, started: float, stream: TextIO = sys.stderr) -> None:
    width = 30
    filled = int(width * done / total) if total else width
    rate = done / max(time.perf_counter() - started, 1e-9)
    stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} runs  {rate:,.0f} runs/s")
    if done >= total:
        stream.write("\n")
    stream.flush()


def cmd_import(args: argparse.Namespace) -> int:
    from app.csv_io import parse_mapping, read_runs
    from app.errors import validation_details
    from app.schemas import RunIn, StudyIn
    from store import queries
    from store.db import run_in_transaction

    try:
        mapping = parse_mapping(args.map or [])
        with open(args.file, newline="", encoding="utf-8") as handle:
            rows = list(read_runs(handle, mapping))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    # Validate the whole file first: a file with a bad row stores nothing at all.
    adapter = TypeAdapter(RunIn)
    runs: list[dict[str, Any]] = []
    problems: list[str] = []
    for line, row in rows:
        try:
            runs.append(adapter.validate_python(row).model_dump())
        except ValidationError as error:
            for detail in validation_details(error.errors()):
                problems.append(f"line {line}: {detail['field']}: {detail['message']}")
    if problems:
        print(f"error: {len(problems)} problem(s) in {args.file}; nothing was imported", file=sys.stderr)
        for problem in problems[:50]:
            print(f"  {problem}", file=sys.stderr)
        if len(problems) > 50:
            print(f"  … and {len(problems) - 50} more", file=sys.stderr)
        return 1

    engine = _engine(args)
    with engine.connect() as conn, conn.begin():
        study = queries.get_study(conn, args.study)
    if study is None:
        if not args.create:
            print(f"error: study '{args.study}' does not exist (pass --create to create it)", file=sys.stderr)
            return 1
        try:
            fields = StudyIn(name=args.study, seq_len=args.seq_len).model_dump()
        except ValidationError as error:
            print(f"error: {validation_details(error.errors())[0]['message']}", file=sys.stderr)
            return 2
        run_in_transaction(engine, lambda conn: queries.create_study(conn, fields, "cli"))
        with engine.connect() as conn, conn.begin():
            study = queries.get_study(conn, args.study)
    assert study is not None
    for run in runs:
        if run["seq_len"] is None:
            run["seq_len"] = study.seq_len

    inserted = duplicates = 0
    started = time.perf_counter()
    for start in range(0, len(runs), args.batch_size):
        batch = runs[start : start + args.batch_size]
        result = run_in_transaction(
            engine, lambda conn: queries.insert_runs(conn, study.id, batch, "cli")
        )
        inserted += result.inserted
        duplicates += result.duplicates
        if not args.quiet:
            _progress(start + len(batch), len(runs), started)
    print(f"imported {inserted} runs into '{study.name}' ({duplicates} duplicates skipped)")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.csv_io import csv_lines
    from store import queries

    engine = _engine(args)
    with engine.connect() as conn, conn.begin():
        study = queries.get_study(conn, args.study)
    if study is None:
        print(f"error: study '{args.study}' does not exist", file=sys.stderr)
        return 1
    keys = queries.run_extra_keys(engine, study.id)
    out = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        for line in csv_lines(queries.iter_runs(engine, study.id), keys):
            out.write(line)
    finally:
        if args.output:
            out.close()
    return 0


# --- tokens --------------------------------------------------------------------------


def cmd_tokens_create(args: argparse.Namespace) -> int:
    import secrets

    from store import queries
    from store.db import run_in_transaction

    name = args.name or f"{args.scope}-{secrets.token_hex(3)}"
    if not 1 <= len(name) <= 64 or "\x00" in name:
        print("error: --name must be 1 to 64 characters", file=sys.stderr)
        return 2
    engine = _engine(args)

    def create(conn) -> str | None:  # type: ignore[no-untyped-def]
        if queries.token_name_exists(conn, name):
            return None
        return queries.create_token(conn, name, args.scope)

    token = run_in_transaction(engine, create)
    if token is None:
        print(f"error: a token named '{name}' already exists", file=sys.stderr)
        return 1
    print(f"created {args.scope} token '{name}'; it is shown only once:")
    print(token)
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    from store import queries

    engine = _engine(args)
    with engine.connect() as conn, conn.begin():
        tokens = queries.list_tokens(conn)
    print(f"{'name':<24} {'scope':<6} {'created':<20} {'last used':<20} status")
    for t in tokens:
        fmt = lambda d: d.strftime("%Y-%m-%d %H:%M:%S") if d else "never"  # noqa: E731
        status = "revoked" if t.revoked_at else "active"
        print(f"{t.name:<24} {t.scope:<6} {fmt(t.created_at):<20} {fmt(t.last_used_at):<20} {status}")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    from store import queries
    from store.db import run_in_transaction

    engine = _engine(args)
    if not run_in_transaction(engine, lambda conn: queries.revoke_token(conn, args.name)):
        print(f"error: no active token named '{args.name}'", file=sys.stderr)
        return 1
    print(f"revoked token '{args.name}'")
    return 0


# --- recommend ----------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _interval_row(name: str, interval: dict[str, float] | None, unit: str = "") -> str:
    if interval is None:
        return f"{name:<16} {'—':>12}"
    return (f"{name:<16} {_fmt(interval['value']):>12}   90% [{_fmt(interval['low'])}, "
            f"{_fmt(interval['high'])}] {unit}").rstrip()


def format_recommendation(study: str, rec: dict[str, Any]) -> str:
    """A launcher-readable table of a recommendation, its baselines and its warnings."""
    target = rec.get("target") or {}
    scale = ", ".join(f"{k}={_fmt(v)}" for k, v in target.items() if v is not None)
    ext = rec["extrapolation"]
    lines = [
        f"study {study}, fit {rec['fit_id']} (data version {rec['data_version']})",
        f"target: {scale}",
        f"extrapolation: {ext['level']} (factor {ext['factor']:.3g})",
        "",
        _interval_row("learning_rate", rec["learning_rate"]),
        _interval_row("batch_size", rec["batch_size"], "sequences"),
        f"{'batch_tokens':<16} {_fmt(rec.get('batch_tokens')):>12}",
        _interval_row("weight_decay", rec["weight_decay"]),
        _interval_row("predicted_loss", rec["predicted_loss"]),
    ]
    if rec.get("compute_optimal"):
        co = rec["compute_optimal"]
        lines += ["", f"compute-optimal at {co['flops']:.3g} FLOPs:",
                  _interval_row("  n_params", co["n_params"]), _interval_row("  tokens", co["tokens"])]
    available = {k: v for k, v in (rec.get("baselines") or {}).items() if v.get("available")}
    if available:
        lines += ["", f"{'baseline':<16} {'learning_rate':>13} {'batch_size':>11}"]
        for name, b in available.items():
            lines.append(f"{name:<16} {_fmt(b.get('learning_rate')):>13} {_fmt(b.get('batch_size')):>11}")
    if rec.get("per_layer"):
        lines += ["", "per-layer multipliers (μP family):"]
        for cls, rule in (rec["per_layer"].get("classes") or {}).items():
            lines.append(f"  {cls:<14} lr ×{_fmt(rule.get('lr_multiplier'))}  init ×{_fmt(rule.get('init_std_multiplier'))}")
    if rec.get("warnings"):
        lines += ["", "warnings:"] + [f"  - {w}" for w in rec["warnings"]]
    return "\n".join(lines)


def cmd_recommend(args: argparse.Namespace) -> int:
    import json

    from hpscale.client import Client, HpscaleError

    token = args.token or os.environ.get("HPSCALE_TOKEN")
    target = {
        "n_params": args.n_params, "tokens": args.tokens, "width": args.width, "depth": args.depth,
        "batch_size": args.batch_size, "batch_multiple": args.batch_multiple, "compute": args.compute,
        "seq_len": args.seq_len,
    }
    try:
        with Client(args.url, token) as client:
            rec = client.recommend(args.study, **target)
    except HpscaleError as error:
        print(f"error: {error.message}", file=sys.stderr)
        for detail in error.details:
            print(f"  {detail.get('field')}: {detail.get('message')}", file=sys.stderr)
        return 1
    except Exception as error:  # connection refused, DNS, timeout: say what and where
        print(f"error: cannot reach {args.url}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(rec, indent=2) if args.json else format_recommendation(args.study, rec))
    return 0


# --- parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hpscale", description=__doc__)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--database-url",
        help="SQLAlchemy URL (default: $HPSCALE_DATABASE_URL or sqlite:///./hpscale.db)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", parents=[common], help="run the HTTP API (upgrades the schema first)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument("--no-auth", action="store_true", help="every request is admin (loopback only)")
    serve.add_argument("--log-level", default="info")
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", parents=[common], help="migrate to the latest schema")
    up.set_defaults(func=cmd_db_upgrade)

    imp = sub.add_parser("import", parents=[common], help="load runs from a CSV file")
    imp.add_argument("file")
    imp.add_argument("--study", required=True)
    imp.add_argument(
        "--map",
        action="append",
        metavar="CSV_COLUMN=FIELD",
        help="rename a column to a run field (repeatable); unmapped unknown columns go to extra",
    )
    imp.add_argument("--create", action="store_true", help="create the study if it does not exist")
    imp.add_argument("--seq-len", type=int, help="with --create: the study's sequence length")
    imp.add_argument("--batch-size", type=int, default=DEFAULT_IMPORT_BATCH, help="runs per transaction")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.set_defaults(func=cmd_import)

    exp = sub.add_parser("export", parents=[common], help="write a study's runs as CSV")
    exp.add_argument("--study", required=True)
    exp.add_argument("--output", "-o", help="file (default: standard output)")
    exp.set_defaults(func=cmd_export)

    rec = sub.add_parser("recommend", help="ask a running server for hyperparameters at a target")
    rec.add_argument("--study", required=True)
    rec.add_argument("--n-params", type=float)
    rec.add_argument("--tokens", type=float)
    rec.add_argument("--width", type=float)
    rec.add_argument("--depth", type=float)
    rec.add_argument("--batch-size", type=float, help="condition the learning rate on this batch (sequences)")
    rec.add_argument("--batch-multiple", type=int, help="round the batch to a multiple of this")
    rec.add_argument("--compute", type=float, help="FLOP budget instead of --n-params/--tokens")
    rec.add_argument("--seq-len", type=int)
    rec.add_argument("--url", default=os.environ.get("HPSCALE_URL", "http://127.0.0.1:8000"))
    rec.add_argument("--token", help="bearer token (default: $HPSCALE_TOKEN)")
    rec.add_argument("--json", action="store_true", help="print the raw JSON answer")
    rec.set_defaults(func=cmd_recommend)

    tokens = sub.add_parser("tokens", help="API tokens")
    tok_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tok_sub.add_parser("create", parents=[common], help="create a token (printed once)")
    create.add_argument("--scope", choices=["read", "write", "admin"], required=True)
    create.add_argument("--name")
    create.set_defaults(func=cmd_tokens_create)
    lst = tok_sub.add_parser("list", parents=[common], help="list tokens (never the tokens themselves)")
    lst.set_defaults(func=cmd_tokens_list)
    revoke = tok_sub.add_parser("revoke", parents=[common], help="revoke a token by name")
    revoke.add_argument("name")
    revoke.set_defaults(func=cmd_tokens_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # e.g. `hpscale export ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
