"""The `hpscale` command: serve, db upgrade, import/export CSV, tokens."""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pydantic import ValidationError

from service.errors import DomainError, InvalidArgument, InvalidInput, InvalidRuns, StorageError, from_storage
from service.limits import DEFAULT_IMPORT_BATCH, SCOPES, TOKEN_NAME_MAX_LENGTH

if TYPE_CHECKING:
    from service.database import Engine
    from service.settings import Settings

# What the command returns for each refusal of the service: 2 for a command line or
# argument the service cannot use, 1 for anything else it refuses (unknown study, bad rows,
# a taken name). Looked up along the exception's class hierarchy.
EXIT_CODES: dict[type[DomainError], int] = {
    InvalidArgument: 2,
    InvalidRuns: 1,
    InvalidInput: 2,
    DomainError: 1,
}


def exit_code(error: DomainError) -> int:
    return next(EXIT_CODES[cls] for cls in type(error).__mro__ if cls in EXIT_CODES)


def report(error: DomainError, limit: int = 50) -> int:
    """Print a refusal (and its details, by CSV line when there are lines) and return its exit code."""
    stream = sys.stderr
    print(f"error: {error.message}", file=stream)
    for detail in error.details[:limit]:
        if detail.get("index") is None and detail["message"] in error.message:
            continue  # the message already says it
        index = detail.get("index")
        # A CSV row is named by its line, a run of a tracker or HPO study by its source id.
        where = "" if index is None else f"line {index}: " if isinstance(index, int) else f"{index}: "
        print(f"  {where}{detail['field']}: {detail['message']}", file=stream)
    if len(error.details) > limit:
        print(f"  … and {len(error.details) - limit} more", file=stream)
    return exit_code(error)


def _settings(args: argparse.Namespace) -> Settings:
    """The environment's settings with --database-url over HPSCALE_DATABASE_URL (validated)."""
    from service.settings import Settings

    overrides = {"database_url": args.database_url} if getattr(args, "database_url", None) else {}
    return Settings(**overrides)


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite URL (None for other databases and in-memory SQLite)."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            path = url[len(prefix) :].split("?", 1)[0]
            return None if path in ("", ":memory:") or path.startswith("file:") else Path(path)
    return None


def _engine(args: argparse.Namespace, *, upgrade: bool = True, create: bool = False) -> Engine:
    """The database the command works on, found the way `hpscale serve` finds it
    (--database-url, else $HPSCALE_DATABASE_URL, else sqlite:///./hpscale.db), and named on
    stderr. Only commands that make a database (db upgrade, import --create, serve) may
    create a missing SQLite file: elsewhere a missing one means "not the server's database"
    (e.g. `tokens create` run in another directory), which used to print tokens the
    server then rejected."""
    from service.database import open_database, redact_url

    url = _settings(args).database_url
    path = _sqlite_file(url)
    if not create and path is not None and not path.exists():
        raise InvalidArgument(
            f"no database at {path.resolve()}: pass the server's --database-url (or set HPSCALE_DATABASE_URL "
            "as for `hpscale serve`), run this where the server's hpscale.db is, or create it with `hpscale db upgrade`"
        )
    where = f" ({path.resolve()})" if path is not None else ""
    print(f"hpscale: using database {redact_url(url)}{where}", file=sys.stderr)
    return open_database(url, upgrade_schema=upgrade)


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


def _setting_errors(error: ValidationError) -> str:
    """One line per invalid setting, without the value given (it may be a secret token)."""
    return "\n".join(
        f"  HPSCALE_{'_'.join(str(part) for part in e['loc']).upper() or 'SETTINGS'}: {e['msg']}"
        for e in error.errors(include_input=False, include_url=False)
    )


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.database import redact_url
    from service.tokens import register_bootstrap_admin

    try:
        settings = _settings(args)
    except ValidationError as error:
        print(f"error: invalid HPSCALE_* setting:\n{_setting_errors(error)}", file=sys.stderr)
        return 2
    args.no_auth = args.no_auth or settings.no_auth
    if args.no_auth and not is_loopback(args.host):
        print(
            f"error: --no-auth is only allowed on a loopback address, not {args.host!r}; "
            "create a token with 'hpscale tokens create --scope admin' instead",
            file=sys.stderr,
        )
        return 2
    # Each request's fit is small linear algebra: BLAS thread pools in every worker would
    # only oversubscribe the cores (seen: 8-10x slower fits under load). Set before numpy loads.
    for variable in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(variable, "1")
    # The workers build their Settings from the environment: hand the flags down that way.
    os.environ["HPSCALE_DATABASE_URL"] = settings.database_url
    os.environ["HPSCALE_NO_AUTH"] = "1" if args.no_auth else "0"
    if args.metrics_token:
        os.environ["HPSCALE_METRICS_TOKEN"] = args.metrics_token
    # Every worker writes its metrics to files in one fresh directory, so that /metrics (in
    # whichever worker answers) sums them all; set before any worker imports prometheus_client.
    metrics_dir = None
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        try:
            metrics_dir = tempfile.mkdtemp(prefix="hpscale-metrics-")
            os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
        except OSError as error:  # e.g. a read-only root file system
            if args.workers > 1:
                print(
                    f"error: no directory for the workers' metrics ({error}); "
                    "set PROMETHEUS_MULTIPROC_DIR to a writable, empty directory",
                    file=sys.stderr,
                )
                return 2
            # One process: its own registry is the whole truth.
    engine = _engine(args, create=True)
    if settings.bootstrap_admin_token is not None:
        register_bootstrap_admin(engine, settings.bootstrap_admin_token.get_secret_value())
    engine.dispose()
    print(f"hpscale: serving http://{args.host}:{args.port} on {redact_url(settings.database_url)}", file=sys.stderr)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        # Slow or idle clients must not exhaust the process (file descriptors, memory):
        # idle keep-alive connections close, connections past the limit get 503 at once,
        # and request lines + headers are bounded. README "Configuration" lists the settings.
        # h11, not httptools: only h11 bounds the request line and headers (the setting below).
        http="h11",
        timeout_keep_alive=settings.timeout_keep_alive,
        limit_concurrency=settings.limit_concurrency,
        h11_max_incomplete_event_size=settings.h11_max_incomplete_event_size,
    )
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from service.database import upgrade

    print(f"database at revision {upgrade(_engine(args, upgrade=False, create=True))}")
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


def _import_rows(
    args: argparse.Namespace,
) -> list[tuple[Any, dict[str, Any]]] | Callable[[], Iterator[tuple[Any, dict[str, Any]]]]:
    """(source id or CSV line, run) for every run of the source `--from` names."""
    from service.csv_io import parse_mapping, read_runs

    mapping = parse_mapping(args.map or [])
    source = args.source
    if source == "csv":
        if len(args.paths) != 1:
            raise InvalidArgument("give one CSV file (or --from optuna|mlflow|wandb)")
        path = args.paths[0]
        with open(path, newline="", encoding="utf-8") as handle:  # fail early on an unreadable file
            next(read_runs(handle, mapping), None)  # and on a bad header or --map

        def stream() -> Iterator[tuple[Any, dict[str, Any]]]:
            # Read twice by the import (validate, then write), never held in memory whole.
            with open(path, newline="", encoding="utf-8") as handle:
                yield from read_runs(handle, mapping)

        return stream
    if source == "optuna":
        from service.importers import optuna as importer_optuna

        if not args.storage or not args.source_study:
            raise InvalidArgument("--from optuna needs --storage URL and --source-study NAME")
        return importer_optuna.read_runs(args.storage, args.source_study, mapping)
    if source == "mlflow":
        from service.importers import mlflow as importer_mlflow

        if not args.tracking_uri or not args.experiment:
            raise InvalidArgument("--from mlflow needs --tracking-uri URI and --experiment NAME")
        return importer_mlflow.read_runs(args.tracking_uri, args.experiment, mapping)
    from service.importers import wandb as importer_wandb

    if not args.paths:
        raise InvalidArgument("--from wandb needs offline run directories (wandb/offline-run-*) or a runs-table CSV")
    return importer_wandb.read_runs(args.paths, mapping)


def cmd_import(args: argparse.Namespace) -> int:
    from service.runs import import_runs
    from service.schemas import StudyIn, validation_details

    if args.undo is not None:
        from service.undo import delete_submission

        deleted = delete_submission(_engine(args), args.study, args.undo, actor="cli", reason=args.reason)
        print(f"deleted {deleted} runs of submission {args.undo} from '{args.study}'")
        return 0
    try:
        rows = _import_rows(args)
    except OSError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    create = None
    if args.create:
        try:
            create = StudyIn(name=args.study, seq_len=args.seq_len)
        except ValidationError as error:
            print(f"error: {validation_details(error.errors())[0]['message']}", file=sys.stderr)
            return 2
    started = time.perf_counter()
    progress = None if args.quiet else (lambda done, total: _progress(done, total, started))
    engine = _engine(args, create=args.create)
    result = import_runs(
        engine,
        args.study,
        rows,
        create=create,
        batch_size=args.batch_size,
        progress=progress,
        source=args.source,
    )
    print(f"imported {result.inserted} runs into '{result.study.name}' ({result.duplicates} duplicates skipped)")
    if result.inserted:
        undo = f"hpscale import --undo {result.submission_id} --study {result.study.name}"
        print(f"submission {result.submission_id}; undo with: {undo}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from service.runs import export_csv

    _, lines = export_csv(_engine(args), args.study)
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(args.output, "w", newline="", encoding="utf-8")) if args.output else sys.stdout
        for line in lines:
            out.write(line)
    return 0


# --- tokens --------------------------------------------------------------------------


def cmd_tokens_create(args: argparse.Namespace) -> int:
    import secrets

    from service import tokens

    name = args.name or f"{args.scope}-{secrets.token_hex(3)}"
    if not 1 <= len(name) <= TOKEN_NAME_MAX_LENGTH or "\x00" in name:
        raise InvalidArgument(f"--name must be 1 to {TOKEN_NAME_MAX_LENGTH} characters")
    token = tokens.create_token(_engine(args), name, args.scope, replace=args.force)
    # The notice goes to stderr, so TOKEN=$(hpscale tokens create ...) holds just the token.
    print(f"created {args.scope} token '{name}'; it is shown only once:", file=sys.stderr)
    print(token)
    return 0


def cmd_tokens_list(args: argparse.Namespace) -> int:
    from service import tokens

    print(f"{'name':<24} {'scope':<6} {'created':<20} {'last used':<20} status")
    for t in tokens.list_tokens(_engine(args)):

        def fmt(d: Any) -> str:
            return d.strftime("%Y-%m-%d %H:%M:%S") if d else "never"

        status = "revoked" if t.revoked_at else "active"
        print(f"{t.name:<24} {t.scope:<6} {fmt(t.created_at):<20} {fmt(t.last_used_at):<20} {status}")
    return 0


def cmd_tokens_revoke(args: argparse.Namespace) -> int:
    from service import tokens

    tokens.revoke_token(_engine(args), args.name)
    print(f"revoked token '{args.name}'")
    return 0


# --- runs, studies, audit ------------------------------------------------------------


def cmd_runs_set_excluded(args: argparse.Namespace) -> int:
    """`runs exclude` and `runs include`: the subcommand's `excluded` default says which."""
    from service.undo import set_excluded

    engine = _engine(args)
    for run_id in args.run_ids:
        set_excluded(engine, args.study, run_id, excluded=args.excluded, reason=args.reason, actor="cli")
        if args.excluded:
            print(f"excluded run {run_id} of '{args.study}': no fit uses it until `hpscale runs include`")
        else:
            print(f"included run {run_id} of '{args.study}' again")
    return 0


def cmd_studies_delete(args: argparse.Namespace) -> int:
    from service.studies import show_study
    from service.undo import delete_study

    engine = _engine(args)
    if not args.yes:
        summary = show_study(engine, args.name)
        print(
            f"error: this deletes study '{args.name}' with its {summary.run_count} runs and its fits; "
            "pass --yes to do it",
            file=sys.stderr,
        )
        return 2
    count = delete_study(engine, args.name, actor="cli", reason=args.reason)
    print(f"deleted study '{args.name}' and its {count} runs")
    return 0


def cmd_audit(args: argparse.Namespace) -> int:
    from service.undo import audit_log

    print(f"{'when':<20} {'who':<16} {'action':<18} {'study':<20} {'what':<18} why")
    for r in reversed(audit_log(_engine(args), args.study, args.limit)):
        what = (
            f"run {r.run_id}"
            if r.run_id is not None
            else f"submission {r.submission_id}"
            if r.submission_id is not None
            else ""
        )
        if r.count is not None:
            what = f"{what} ({r.count} runs)".strip()
        when = r.created_at.strftime("%Y-%m-%d %H:%M:%S")
        print(f"{when:<20} {r.actor or '-':<16} {r.action:<18} {r.study:<20} {what:<18} {r.reason or ''}".rstrip())
    return 0


# --- recommend ----------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.4g}"


def _interval_row(name: str, interval: dict[str, float] | None, unit: str = "") -> str:
    if interval is None:
        return f"{name:<16} {'—':>12}"
    return (
        f"{name:<16} {_fmt(interval['value']):>12}   90% [{_fmt(interval['low'])}, {_fmt(interval['high'])}] {unit}"
    ).rstrip()


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
        lines += [
            "",
            f"compute-optimal at {co['flops']:.3g} FLOPs:",
            _interval_row("  n_params", co["n_params"]),
            _interval_row("  tokens", co["tokens"]),
        ]
    available = {k: v for k, v in (rec.get("baselines") or {}).items() if v.get("available")}
    if available:
        lines += ["", f"{'baseline':<16} {'learning_rate':>13} {'batch_size':>11}"]
        for name, b in available.items():
            lines.append(f"{name:<16} {_fmt(b.get('learning_rate')):>13} {_fmt(b.get('batch_size')):>11}")
    if rec.get("per_layer"):
        lines += ["", "per-layer multipliers (μP family):"]
        for cls, rule in (rec["per_layer"].get("classes") or {}).items():
            lines.append(
                f"  {cls:<14} lr ×{_fmt(rule.get('lr_multiplier'))}  init ×{_fmt(rule.get('init_std_multiplier'))}"
            )
    if rec.get("warnings"):
        lines += ["", "warnings:"] + [f"  - {w}" for w in rec["warnings"]]
    return "\n".join(lines)


AUTH_HINTS = {
    401: "pass a token with --token-file FILE or $HPSCALE_TOKEN (create one on the server's database with "
    "`hpscale tokens create --scope read`)",
    403: "this token's scope is too small for the request; create one with a larger --scope",
}


def cmd_recommend(args: argparse.Namespace) -> int:
    import json

    from hpscale.client import Client, HpscaleError
    from service.settings import ClientSettings

    client_settings = ClientSettings()
    url = args.url or client_settings.url
    token = args.token or (client_settings.token.get_secret_value() if client_settings.token else None)
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip()
    target = {
        "n_params": args.n_params,
        "tokens": args.tokens,
        "width": args.width,
        "depth": args.depth,
        "batch_size": args.batch_size,
        "batch_multiple": args.batch_multiple,
        "compute": args.compute,
        "seq_len": args.seq_len,
        "fit_id": args.fit_id,
    }
    try:
        with Client(url, token) as client:
            rec = client.recommend(args.study, **target)
    except HpscaleError as error:
        print(f"error: {error.message}", file=sys.stderr)
        for detail in error.details:
            if str(detail.get("message")) not in error.message:  # said once, not twice
                print(f"  {detail.get('field')}: {detail.get('message')}", file=sys.stderr)
        if error.status_code in AUTH_HINTS:
            print(f"hint: {AUTH_HINTS[error.status_code]}", file=sys.stderr)
        return 1
    except Exception as error:  # noqa: BLE001 - connection refused, DNS, timeout: say what and where
        print(f"error: cannot reach {url}: {error}", file=sys.stderr)
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
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workers", type=int, default=1, help="worker processes")
    serve.add_argument("--no-auth", action="store_true", help="every request is admin (loopback only)")
    serve.add_argument(
        "--metrics-token",
        help="GET /metrics then needs 'Authorization: Bearer <this>' (default: open; or $HPSCALE_METRICS_TOKEN)",
    )
    serve.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    serve.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database schema")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", parents=[common], help="migrate to the latest schema")
    up.set_defaults(func=cmd_db_upgrade)

    imp = sub.add_parser(
        "import",
        parents=[common],
        help="load runs from a CSV file, an Optuna study, an MLflow experiment or W&B runs; or undo an import",
    )
    imp.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help="the CSV file; with --from wandb: offline run directories (wandb/offline-run-*) or a runs-table CSV",
    )
    imp.add_argument("--study", required=True, help="the hpscale study the runs go into")
    imp.add_argument(
        "--from",
        dest="source",
        choices=("csv", "optuna", "mlflow", "wandb"),
        default="csv",
        help="where the runs live (default: csv)",
    )
    imp.add_argument("--storage", help="with --from optuna: the storage URL (e.g. sqlite:///optuna.db)")
    imp.add_argument("--source-study", help="with --from optuna: the Optuna study name")
    imp.add_argument("--tracking-uri", help="with --from mlflow: the tracking server URI (e.g. http://mlflow:5000)")
    imp.add_argument("--experiment", help="with --from mlflow: the experiment name")
    imp.add_argument(
        "--map",
        action="append",
        metavar="SOURCE_NAME=FIELD",
        help="read this column / param / metric as that run field (repeatable; two onto one field are refused); "
        "unmapped unknown names go to extra",
    )
    imp.add_argument("--create", action="store_true", help="create the study if it does not exist")
    imp.add_argument("--seq-len", type=int, help="with --create: the study's sequence length")
    imp.add_argument("--batch-size", type=int, default=DEFAULT_IMPORT_BATCH, help="runs per transaction")
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.add_argument(
        "--undo",
        type=int,
        metavar="SUBMISSION",
        help="delete the runs this submission (an import's or a POST's submission_id) stored, instead of importing",
    )
    imp.add_argument("--reason", help="with --undo: why (kept in the audit log)")
    imp.set_defaults(func=cmd_import)

    runs = sub.add_parser("runs", help="exclude runs from fits or include them again (audited)")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    exclude = runs_sub.add_parser("exclude", parents=[common], help="leave runs out of every fit (they stay stored)")
    exclude.add_argument("run_ids", nargs="+", type=int, metavar="RUN_ID", help="run ids (the `id` of a listed run)")
    exclude.add_argument("--study", required=True, help="the study the runs belong to")
    exclude.add_argument("--reason", required=True, help="why (shown with the run, kept in the audit log)")
    exclude.set_defaults(func=cmd_runs_set_excluded, excluded=True)
    include = runs_sub.add_parser("include", parents=[common], help="let fits use excluded runs again")
    include.add_argument("run_ids", nargs="+", type=int, metavar="RUN_ID", help="run ids")
    include.add_argument("--study", required=True, help="the study the runs belong to")
    include.add_argument("--reason", help="why (kept in the audit log)")
    include.set_defaults(func=cmd_runs_set_excluded, excluded=False)

    studies = sub.add_parser("studies", help="manage studies")
    studies_sub = studies.add_subparsers(dest="studies_command", required=True)
    delete = studies_sub.add_parser("delete", parents=[common], help="delete a study with its runs and fits")
    delete.add_argument("name", help="the study")
    delete.add_argument("--yes", action="store_true", help="really delete (without it, say what would go)")
    delete.add_argument("--reason", help="why (kept in the audit log)")
    delete.set_defaults(func=cmd_studies_delete)

    audit = sub.add_parser("audit", parents=[common], help="who excluded, included or deleted what, when and why")
    audit.add_argument("--study", help="only this study (deleted ones too)")
    audit.add_argument("--limit", type=int, default=1000, help="newest N records (default 1000)")
    audit.set_defaults(func=cmd_audit)

    exp = sub.add_parser("export", parents=[common], help="write a study's runs as CSV")
    exp.add_argument("--study", required=True, help="the study to export")
    exp.add_argument("--output", "-o", help="file (default: standard output)")
    exp.set_defaults(func=cmd_export)

    rec = sub.add_parser("recommend", help="ask a running server for hyperparameters at a target")
    rec.add_argument("--study", required=True, help="the study whose laws answer")
    rec.add_argument("--n-params", type=float, help="target total parameters")
    rec.add_argument("--tokens", type=float, help="target training tokens")
    rec.add_argument("--width", type=float, help="target model width (if the laws use it)")
    rec.add_argument("--depth", type=float, help="target layers (if the laws use it)")
    rec.add_argument("--batch-size", type=float, help="condition the learning rate on this batch (sequences)")
    rec.add_argument("--batch-multiple", type=int, help="round the batch to a multiple of this")
    rec.add_argument("--compute", type=float, help="FLOP budget instead of --n-params/--tokens")
    rec.add_argument("--seq-len", type=int, help="tokens per sequence, for batch_tokens")
    rec.add_argument(
        "--fit-id",
        type=int,
        help="answer from this fit (the fit_id printed by an earlier answer): the same answer again",
    )
    rec.add_argument("--url", help="server (default: $HPSCALE_URL or http://127.0.0.1:8000)")
    rec.add_argument("--token-file", type=Path, help="read the bearer token from this file (default: $HPSCALE_TOKEN)")
    rec.add_argument(
        "--token", help="bearer token; discouraged: other users see it in `ps`; use $HPSCALE_TOKEN or --token-file"
    )
    rec.add_argument("--json", action="store_true", help="print the raw JSON answer")
    rec.set_defaults(func=cmd_recommend)

    tokens = sub.add_parser("tokens", help="API tokens")
    tok_sub = tokens.add_subparsers(dest="tokens_command", required=True)
    create = tok_sub.add_parser("create", parents=[common], help="create a token (printed once)")
    create.add_argument("--scope", choices=SCOPES, required=True, help="read, write (read + submit/fit) or admin")
    create.add_argument("--name", help="a name to list and revoke it by (default: SCOPE-random)")
    create.add_argument(
        "--force",
        action="store_true",
        help="if a token of this --name exists, replace it (the old one stops working): keeps scripts re-runnable",
    )
    create.set_defaults(func=cmd_tokens_create)
    lst = tok_sub.add_parser("list", parents=[common], help="list tokens (never the tokens themselves)")
    lst.set_defaults(func=cmd_tokens_list)
    revoke = tok_sub.add_parser("revoke", parents=[common], help="revoke a token by name")
    revoke.add_argument("name", help="the token's name (see `hpscale tokens list`)")
    revoke.set_defaults(func=cmd_tokens_revoke)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except DomainError as error:
        return report(error)
    except StorageError as error:  # the database is down, unmigrated, or changed meanwhile: one line
        return report(from_storage(error))
    except ValidationError as error:  # an HPSCALE_* setting
        print(f"error: invalid HPSCALE_* setting:\n{_setting_errors(error)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `hpscale export ... | head`
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
