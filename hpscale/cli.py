"""hpscale: a hyperparameter-transfer and scaling-law service, and its command line.

On the server's database (--database-url, else $HPSCALE_DATABASE_URL, else ./hpscale.db):
  serve                 run the HTTP API and the dashboard (upgrades the schema first)
  db upgrade            migrate the database to the latest schema
  studies create|list|delete
                        make a study (its optimizer, parameterization, priors…), list them, delete one
  import                load runs from a CSV, an Optuna study, an MLflow experiment or W&B runs;
                        --undo a submission
  export                write a study's runs as CSV (imports back exactly)
  runs list|exclude|include
                        list a study's runs (filtered, sorted, by their state in the latest fit);
                        leave runs out of fits or let them back in
  audit                 who submitted, imported, excluded, included or deleted what, when and why
  tokens create|list|revoke
                        API tokens (printed once; only a hash is stored)
Against a running server (--url, $HPSCALE_URL; token from $HPSCALE_TOKEN or --token-file):
  recommend             hyperparameters at a target scale, with 90% intervals
  transfer-check        do the study's optima transfer across width and depth (or drift)?
  suggest               the proxy runs that would most narrow the answer (within a FLOP budget),
                        as a table, JSON, an Optuna study or a W&B sweep
  submit                post runs saved as JSON (a tracked run saved when the server was down)

`hpscale COMMAND --help` explains every option.
"""

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


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """How `hpscale serve` configures uvicorn (besides the app, address and workers)."""
    trusted = settings.forwarded_allow_ips
    return {
        # app/server.py: uvicorn's h11 protocol with connection-level limits (head and body
        # deadlines, per-address and per-process connection caps, requests-in-progress
        # limit). h11, not httptools: only h11 bounds the request line and headers.
        "http": "app.server:LimitedH11Protocol",
        "timeout_keep_alive": settings.timeout_keep_alive,
        "limit_concurrency": None,  # counted per request by app.server, not per connection
        "h11_max_incomplete_event_size": settings.h11_max_incomplete_event_size,
        # X-Forwarded-For / -Proto only from the proxies the operator names: otherwise any
        # client could pick the address the failed-auth limit counts (uvicorn trusts
        # 127.0.0.1 by default).
        "proxy_headers": trusted is not None,
        "forwarded_allow_ips": trusted or "",
    }


def _raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard one: each connection holds one, and the
    server keeps its connection cap below it (app/server.py)."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def make_database_private(url: str) -> None:
    """Make an existing SQLite database (and its -wal, -shm) readable by its owner only.

    New files are created 0600 (store.db.make_engine); one made by an earlier version or
    copied in may be 0644, readable by every local user. InvalidArgument if it cannot be."""
    path = _sqlite_file(url)
    if path is None:
        return
    for file in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = file.stat().st_mode & 0o777
        except FileNotFoundError:
            continue
        if not mode & 0o077:
            continue
        try:
            file.chmod(0o600)
        except OSError as error:
            raise InvalidArgument(
                f"{file} is readable by other users (mode {mode:04o}) and cannot be made private "
                f"({error.strerror}): run `chmod 600 {file}` as its owner"
            ) from None
        print(f"hpscale: {file} was mode {mode:04o}; now 0600 (owner only)", file=sys.stderr)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.database import redact_url
    from service.settings import Settings
    from service.tokens import register_bootstrap_admin

    # The flags, validated with the environment's settings before any worker starts.
    flags = {
        "database_url": args.database_url,
        "metrics_token": args.metrics_token,
        "metrics_token_file": args.metrics_token_file,
        "forwarded_allow_ips": args.forwarded_allow_ips,
    }
    try:
        settings = Settings(**{name: value for name, value in flags.items() if value})
    except ValidationError as error:
        print(f"error: invalid HPSCALE_* setting:\n{_setting_errors(error)}", file=sys.stderr)
        return 2
    if args.metrics_token:
        print(
            "hpscale: warning: --metrics-token shows the token to every local user (ps); "
            "use --metrics-token-file or HPSCALE_METRICS_TOKEN_FILE",
            file=sys.stderr,
        )
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
    # The workers build their Settings from the environment: hand the flags down that way
    # (a token file by its path, so the token itself is in no environment).
    os.environ["HPSCALE_DATABASE_URL"] = settings.database_url
    os.environ["HPSCALE_NO_AUTH"] = "1" if args.no_auth else "0"
    if args.metrics_token:
        os.environ["HPSCALE_METRICS_TOKEN"] = args.metrics_token
    if args.metrics_token_file:
        os.environ["HPSCALE_METRICS_TOKEN_FILE"] = str(args.metrics_token_file)
    if settings.forwarded_allow_ips:
        os.environ["HPSCALE_FORWARDED_ALLOW_IPS"] = settings.forwarded_allow_ips
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
    make_database_private(settings.database_url)
    engine = _engine(args, create=True)
    if settings.bootstrap_admin_token is not None:
        register_bootstrap_admin(engine, settings.bootstrap_admin_token.get_secret_value())
    engine.dispose()
    _raise_open_file_limit()
    print(f"hpscale: serving http://{args.host}:{args.port} on {redact_url(settings.database_url)}", file=sys.stderr)
    uvicorn.run(
        "app.main:create_app",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        log_level=args.log_level,
        **uvicorn_options(settings),
    )
    if metrics_dir is not None:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


def cmd_db_upgrade(args: argparse.Namespace) -> int:
    from service.database import upgrade

    make_database_private(_settings(args).database_url)
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


def _import_source(args: argparse.Namespace) -> str:
    """What the import reads, in words (for messages and the audit log)."""
    if args.source == "optuna":
        return f"Optuna study '{args.source_study}'"
    if args.source == "mlflow":
        return f"MLflow experiment '{args.experiment}'"
    if args.source == "wandb":
        return "the W&B runs " + ", ".join(Path(p).name for p in args.paths[:3]) + (" …" if len(args.paths) > 3 else "")
    return f"the file {Path(args.paths[0]).name}" if args.paths else "the file"


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
        return importer_optuna.read_runs(args.storage, args.source_study, mapping, timeout=args.timeout)
    if source == "mlflow":
        from service.importers import mlflow as importer_mlflow

        if not args.tracking_uri or not args.experiment:
            raise InvalidArgument("--from mlflow needs --tracking-uri URI and --experiment NAME")
        return importer_mlflow.read_runs(
            args.tracking_uri, args.experiment, mapping, timeout=args.timeout, curves=not args.no_curves
        )
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
    given = [f"--{k.replace('_', '-')}" for k in STUDY_OPTIONS if getattr(args, k) is not None]
    if args.create:
        try:
            create = StudyIn(name=args.study, **_study_fields(args))
        except ValidationError as error:
            print(f"error: {validation_details(error.errors())[0]['message']}", file=sys.stderr)
            return 2
    elif given:
        print(f"error: {', '.join(given)} set a new study's properties: use them with --create", file=sys.stderr)
        return 2
    started = time.perf_counter()
    progress = None if args.quiet else (lambda done, total: _progress(done, total, started))
    engine = _engine(args, create=args.create)
    what = _import_source(args)
    result = import_runs(
        engine,
        args.study,
        rows,
        create=create,
        batch_size=args.batch_size,
        progress=progress,
        source=args.source,
        what=what,
        description=what,
        skip_invalid=args.skip_invalid,
    )
    print(f"imported {result.inserted} runs into '{result.study.name}' ({result.duplicates} duplicates skipped)")
    if result.skipped:
        lines = sorted({str(d["index"]) for d in result.skipped}, key=lambda v: (len(v), v))
        print(f"skipped {len(lines)} invalid run(s) of {what} (--skip-invalid):", file=sys.stderr)
        for detail in result.skipped[:50]:
            index = detail["index"]
            where = f"line {index}" if isinstance(index, int) else str(index)
            print(f"  {where}: {detail['field']}: {detail['message']}", file=sys.stderr)
        if len(result.skipped) > 50:
            print(f"  … and {len(result.skipped) - 50} more", file=sys.stderr)
    if result.keyed_by_content:
        print(
            f"note: {result.keyed_by_content} run(s) had no run_key and got one from their content (as the Python "
            "client does), so importing this file again adds nothing; map a column with --map COLUMN=run_key to "
            "key them yourself",
            file=sys.stderr,
        )
    if result.submissions:
        moved = ", ".join(f"{old} → {new}" for old, new in sorted(result.submissions.items()))
        print(f"the exported study's submissions are these submissions here: {moved}")
    if create is not None and result.created:
        print(f"created study {_describe_study(result.study)}", file=sys.stderr)
    elif create is not None and given:
        print(
            f"note: study '{result.study.name}' already existed; {', '.join(given)} did not change it "
            f"(it is {_describe_study(result.study)})",
            file=sys.stderr,
        )
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
    # The name is recorded on what the token creates (runs.csv's created_by): no control characters.
    if not 1 <= len(name) <= TOKEN_NAME_MAX_LENGTH or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in name):
        raise InvalidArgument(f"--name must be 1 to {TOKEN_NAME_MAX_LENGTH} characters, without control characters")
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


def _cell(value: Any, digits: int = 4) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def cmd_runs_list(args: argparse.Namespace) -> int:
    """A study's runs as a table (or CSV), filtered and sorted over the whole study."""
    from service.run_states import FIT_STATES
    from service.runs import Listing, RunFilters, export_csv, list_runs

    state = "near_optimal" if args.state == "near-optimal" else args.state
    if state is not None and state not in FIT_STATES:
        raise InvalidArgument(f"--state must be one of {', '.join(FIT_STATES)}")
    filters = RunFilters(status=args.status, width=args.width, depth=args.depth)
    listing = Listing(filters, state, args.sort, args.desc)
    engine = _engine(args)
    if args.csv:
        _, lines = export_csv(engine, args.study, listing)
        for line in lines:
            sys.stdout.write(line)
        return 0
    columns = [
        ("id", ">7"),
        ("run_key", "<24"),
        ("fit_state", "<12"),
        ("n_params", ">9"),
        ("tokens", ">9"),
        ("width", ">6"),
        ("depth", ">5"),
        ("learning_rate", ">10"),
        ("batch_size", ">7"),
        ("weight_decay", ">7"),
        ("final_loss", ">9"),
        ("status", "<9"),
    ]
    heads = {"fit_state": "state", "learning_rate": "lr", "batch_size": "batch", "weight_decay": "wd"}
    print(" ".join(f"{heads.get(name, name):{fmt}}" for name, fmt in columns).rstrip())
    shown, cursor = 0, None
    while True:
        want = args.limit - shown if args.limit else 1000
        page = list_runs(engine, args.study, cursor=cursor, limit=min(1000, want), filters=filters, listing=listing)
        for run in page.items:
            cells = []
            for name, fmt in columns:
                text = _cell(run.get(name), 3 if name in ("n_params", "tokens") else 4)
                if name == "run_key" and len(text) > 24:
                    text = text[:23] + "…"
                cells.append(f"{text:{fmt}}")
            print(" ".join(cells).rstrip())
        shown += len(page.items)
        cursor = page.next_cursor
        if cursor is None or (args.limit and shown >= args.limit):
            break
    more = " (more: raise --limit, or --limit 0 for all)" if cursor is not None else ""
    fit = f"; states from fit {page.fit_id}" if page.fit_id is not None else "; no fit yet"
    print(f"{shown} run(s){more}{fit}", file=sys.stderr)
    return 0


# A study's properties the CLI can set when it creates one (`studies create`, `import --create`).
STUDY_OPTIONS = ("description", "parameterization", "optimizer", "base_width", "base_depth", "seq_len", "priors")


def _study_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields = {k: getattr(args, k) for k in STUDY_OPTIONS if getattr(args, k, None) is not None}
    if getattr(args, "loss_can_be_negative", False):
        fields["loss_can_be_negative"] = True
    return fields


def _describe_study(study: Any) -> str:
    """One line: what the fit will assume of this study (optimizer, parameterization, priors)."""
    seq = f", seq_len {study.seq_len}" if study.seq_len else ""
    return (
        f"'{study.name}': optimizer {study.optimizer}, parameterization {study.parameterization}, "
        f"priors {study.priors}{seq} (published priors apply only where they match the optimizer and "
        "parameterization; set them with --optimizer / --parameterization / --priors at creation)"
    )


def cmd_studies_create(args: argparse.Namespace) -> int:
    from service.schemas import StudyIn, validation_details
    from service.studies import create_study

    try:
        fields = StudyIn(name=args.name, **_study_fields(args))
    except ValidationError as error:
        print(f"error: {validation_details(error.errors())[0]['message']}", file=sys.stderr)
        return 2
    study = create_study(_engine(args, create=True), fields, created_by="cli")
    print(f"created study {_describe_study(study)}")
    return 0


def cmd_studies_list(args: argparse.Namespace) -> int:
    from service.studies import list_studies_with_counts

    rows = list_studies_with_counts(_engine(args))
    print(f"{'name':<24} {'runs':>9} {'optimizer':<12} {'param.':<10} {'priors':<10} {'seq_len':>8}  description")
    for study, runs in rows:
        desc = (study.description or "").replace("\n", " ")[:60]
        seq = str(study.seq_len) if study.seq_len else "-"
        print(
            f"{study.name:<24} {runs:>9,} {study.optimizer:<12} {study.parameterization:<10} {study.priors:<10} "
            f"{seq:>8}  {desc}".rstrip()
        )
    return 0


def _add_study_options(parser: argparse.ArgumentParser, when: str) -> None:
    parser.add_argument("--description", help=f"{when}: what the study is")
    parser.add_argument(
        "--parameterization",
        choices=("sp", "mup", "depth-mup", "completep"),
        help=f"{when}: how widths and depths are parameterized (default sp); decides which published priors apply",
    )
    parser.add_argument("--optimizer", help=f"{when}: the optimizer (default adamw); priors are Adam-type only")
    parser.add_argument("--base-width", type=int, help=f"{when}: μP base width (per-layer multipliers)")
    parser.add_argument("--base-depth", type=int, help=f"{when}: μP base depth")
    parser.add_argument("--seq-len", type=int, help=f"{when}: tokens per sequence (batch sizes are in sequences)")
    parser.add_argument(
        "--priors",
        choices=("published", "none"),
        help=f"{when}: start the laws from the published results (default) or from the data alone",
    )
    parser.add_argument(
        "--loss-can-be-negative", action="store_true", help=f"{when}: accept final_loss ≤ 0 (not cross-entropy)"
    )


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


def _server(args: argparse.Namespace) -> tuple[str, str | None]:
    """The server URL and bearer token of a client command (flags, then HPSCALE_URL/HPSCALE_TOKEN)."""
    from service.settings import ClientSettings

    client_settings = ClientSettings()
    url = args.url or client_settings.url
    token = args.token or (client_settings.token.get_secret_value() if client_settings.token else None)
    if args.token_file is not None:
        token = args.token_file.read_text(encoding="utf-8").strip()
    return url, token


def cmd_submit(args: argparse.Namespace) -> int:
    """Post runs saved as JSON (a tracked run that could not reach the server saves itself so)."""
    import json

    from hpscale.client import Client, HpscaleError

    url, token = _server(args)
    batches: list[tuple[str, list[dict]]] = []
    for path in args.paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            print(f"error: cannot read {path}: {error}", file=sys.stderr)
            return 2
        if isinstance(data, list):
            data = {"runs": data}
        elif isinstance(data, dict) and "runs" not in data:
            data = {"runs": [data]}
        study = args.study or (data.get("study") if isinstance(data, dict) else None)
        if not isinstance(study, str) or not isinstance(data.get("runs"), list):
            print(
                f"error: {path}: give --study (the file names none) and a run, a list of runs or {{'runs': [...]}}",
                file=sys.stderr,
            )
            return 2
        batches.append((study, data["runs"]))
    try:
        with Client(url, token) as client:
            for (study, runs), path in zip(batches, args.paths):
                result = client.submit(study, runs)
                print(
                    f"{path}: {study}: {result['inserted']} stored, {result.get('replaced', 0)} replaced a failed "
                    f"attempt, {result['duplicates']} already there"
                )
    except HpscaleError as error:
        return _client_error(error)
    except Exception as error:  # noqa: BLE001 - connection refused, DNS, timeout: say what and where
        print(f"error: cannot reach {url}: {error}", file=sys.stderr)
        return 1
    return 0


def _client_error(error: Any) -> int:
    print(f"error: {error.message}", file=sys.stderr)
    for detail in error.details:
        if str(detail.get("message")) not in error.message:  # said once, not twice
            print(f"  {detail.get('field')}: {detail.get('message')}", file=sys.stderr)
    if error.status_code in AUTH_HINTS:
        print(f"hint: {AUTH_HINTS[error.status_code]}", file=sys.stderr)
    return 1


def cmd_recommend(args: argparse.Namespace) -> int:
    import json

    from hpscale.client import Client, HpscaleError

    url, token = _server(args)
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
        return _client_error(error)
    except Exception as error:  # noqa: BLE001 - connection refused, DNS, timeout: say what and where
        print(f"error: cannot reach {url}: {error}", file=sys.stderr)
        return 1
    print(json.dumps(rec, indent=2) if args.json else format_recommendation(args.study, rec))
    return 0


def _client_call(args: argparse.Namespace, call: Callable[[Any], Any]) -> tuple[int, Any]:
    """Run `call(client)` against the server of a client command; (exit code, answer)."""
    from hpscale.client import Client, HpscaleError

    url, token = _server(args)
    try:
        with Client(url, token) as client:
            return 0, call(client)
    except HpscaleError as error:
        return _client_error(error), None
    except Exception as error:  # noqa: BLE001 - connection refused, DNS, timeout: say what and where
        print(f"error: cannot reach {url}: {error}", file=sys.stderr)
        return 1, None


def _target_query(args: argparse.Namespace) -> dict[str, Any]:
    return {"n_params": args.n_params, "tokens": args.tokens, "width": args.width, "depth": args.depth}


def cmd_transfer_check(args: argparse.Namespace) -> int:
    """Does the study's transfer work: the drift of each optimum along width and depth (contract 1.2)."""
    import json

    from hpscale.handoff import format_transfer_check

    query = {**_target_query(args), "tolerance": args.tolerance, "fit_id": args.fit_id}
    code, answer = _client_call(args, lambda client: client.transfer_check(args.study, **query))
    if code == 0:
        print(json.dumps(answer, indent=2) if args.json else format_transfer_check(args.study, answer))
    return code


def cmd_suggest(args: argparse.Namespace) -> int:
    """The next proxies for a budget, printed or handed to Optuna, a W&B sweep or a launcher (JSON)."""
    from hpscale import handoff

    if args.to == "optuna" and not (args.storage and args.optuna_study):
        print("error: --to optuna needs --storage URL and --optuna-study NAME", file=sys.stderr)
        return 2
    if args.to == "wandb-sweep" and args.output is None:
        print("error: --to wandb-sweep needs --output FILE (the sweep YAML to write)", file=sys.stderr)
        return 2
    query = {
        **_target_query(args),
        "count": args.count,
        "budget_flops": args.budget_flops,
        "max_n_params": args.max_n_params,
        "max_tokens": args.max_tokens,
    }
    code, answer = _client_call(args, lambda client: client.suggest(args.study, **query))
    if code != 0:
        return code
    runs = handoff.suggested_runs(args.study, answer, seq_len=args.seq_len)
    if args.to == "table":
        print(handoff.format_suggestions(args.study, answer))
    elif args.to == "json":
        text = handoff.to_json(args.study, answer, runs)
        if args.output is None:
            print(text)
        else:
            args.output.write_text(text + "\n", encoding="utf-8")
            print(f"{len(runs)} run(s) written to {args.output}", file=sys.stderr)
    elif args.to == "optuna":
        from service.importers.common import redact_credentials

        added = handoff.to_optuna(args.study, answer, runs, args.storage, args.optuna_study)
        print(
            f"{added} trial(s) enqueued in Optuna study {args.optuna_study!r} at {redact_credentials(args.storage)} "
            f"({len(runs) - added} already there); when they finish: hpscale import --from optuna --storage … "
            f"--source-study {args.optuna_study} --study {args.study}"
        )
    else:
        config = handoff.wandb_sweep_config(args.study, answer, runs, program=args.program)
        handoff.write_wandb_sweep(args.output, config)
        print(
            f"W&B sweep over {len(runs)} run(s) written to {args.output}: wandb sweep {args.output}; "
            f"then hpscale import --from wandb wandb/ --study {args.study}"
        )
    return 0


# --- parser --------------------------------------------------------------------------


# The columns `runs list --sort` takes (store.runviews.SORTABLE; the CLI does not import store).
SORTABLE_COLUMNS = (
    "id",
    "run_key",
    "n_params",
    "tokens",
    "width",
    "depth",
    "seq_len",
    "learning_rate",
    "batch_size",
    "weight_decay",
    "status",
    "final_loss",
    "seed",
    "created_at",
    "created_by",
    "submission_id",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpscale", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
        "--metrics-token-file",
        type=Path,
        help="GET /metrics then needs 'Authorization: Bearer <the token in this file>' "
        "(default: open; or $HPSCALE_METRICS_TOKEN_FILE, $HPSCALE_METRICS_TOKEN)",
    )
    serve.add_argument("--metrics-token", help="the metrics token itself; discouraged: other users see it in `ps`")
    serve.add_argument(
        "--forwarded-allow-ips",
        metavar="ADDRESSES",
        help="reverse proxies whose X-Forwarded-For/-Proto are believed: comma-separated addresses or "
        "networks, '*' for any (default: none; or $HPSCALE_FORWARDED_ALLOW_IPS)",
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
    _add_study_options(imp, "with --create")
    imp.add_argument("--batch-size", type=int, default=DEFAULT_IMPORT_BATCH, help="runs per transaction")
    imp.add_argument(
        "--skip-invalid",
        action="store_true",
        help="import the valid runs and list the invalid ones (by line or source id) instead of importing nothing",
    )
    imp.add_argument(
        "--timeout",
        type=float,
        default=10.0,
        help="seconds an Optuna database or MLflow server may take to answer before the import stops (default 10)",
    )
    imp.add_argument(
        "--no-curves",
        action="store_true",
        help="with --from mlflow: skip the metric histories (one request per run and metric)",
    )
    imp.add_argument("--quiet", action="store_true", help="no progress bar")
    imp.add_argument(
        "--undo",
        type=int,
        metavar="SUBMISSION",
        help="delete the runs this submission (an import's or a POST's submission_id) stored, instead of importing",
    )
    imp.add_argument("--reason", help="with --undo: why (kept in the audit log)")
    imp.set_defaults(func=cmd_import)

    runs = sub.add_parser("runs", help="list a study's runs; exclude runs from fits or include them again (audited)")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    rlist = runs_sub.add_parser(
        "list", parents=[common], help="a study's runs, filtered and sorted over the whole study (table or --csv)"
    )
    rlist.add_argument("--study", required=True, help="the study")
    rlist.add_argument(
        "--state",
        help="how the latest fit used the run: near_optimal, used, diverged, outlier, failed or excluded",
    )
    rlist.add_argument("--status", choices=("completed", "diverged", "failed"), help="the run's own status")
    rlist.add_argument("--width", type=int, help="only this width")
    rlist.add_argument("--depth", type=int, help="only this depth")
    rlist.add_argument("--sort", default="id", choices=SORTABLE_COLUMNS, help="sort by this column (default id)")
    rlist.add_argument("--desc", action="store_true", help="largest first")
    rlist.add_argument("--limit", type=int, default=50, help="at most this many runs (default 50; 0: all)")
    rlist.add_argument("--csv", action="store_true", help="print the runs as CSV (every run of the view, all columns)")
    rlist.set_defaults(func=cmd_runs_list)
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
    screate = studies_sub.add_parser(
        "create", parents=[common], help="create a study (its optimizer, parameterization…)"
    )
    screate.add_argument("name", help="lower-case id: letters, digits, . _ -")
    _add_study_options(screate, "new study")
    screate.set_defaults(func=cmd_studies_create)
    slist = studies_sub.add_parser("list", parents=[common], help="list the studies with their run counts")
    slist.set_defaults(func=cmd_studies_list)
    delete = studies_sub.add_parser("delete", parents=[common], help="delete a study with its runs and fits")
    delete.add_argument("name", help="the study")
    delete.add_argument("--yes", action="store_true", help="really delete (without it, say what would go)")
    delete.add_argument("--reason", help="why (kept in the audit log)")
    delete.set_defaults(func=cmd_studies_delete)

    audit = sub.add_parser(
        "audit", parents=[common], help="who submitted, imported, excluded, included or deleted what, when and why"
    )
    audit.add_argument("--study", help="only this study (deleted ones too)")
    audit.add_argument("--limit", type=int, default=1000, help="newest N records (default 1000)")
    audit.set_defaults(func=cmd_audit)

    exp = sub.add_parser("export", parents=[common], help="write a study's runs as CSV")
    exp.add_argument("--study", required=True, help="the study to export")
    exp.add_argument("--output", "-o", help="file (default: standard output)")
    exp.set_defaults(func=cmd_export)

    # the server a client command talks to
    server = argparse.ArgumentParser(add_help=False)
    server.add_argument("--url", help="server (default: $HPSCALE_URL or http://127.0.0.1:8000)")
    server.add_argument(
        "--token-file", type=Path, help="read the bearer token from this file (default: $HPSCALE_TOKEN)"
    )
    server.add_argument(
        "--token", help="bearer token; discouraged: other users see it in `ps`; use $HPSCALE_TOKEN or --token-file"
    )
    rec = sub.add_parser("recommend", parents=[server], help="ask a running server for hyperparameters at a target")
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
    rec.add_argument("--json", action="store_true", help="print the raw JSON answer")
    rec.set_defaults(func=cmd_recommend)

    tc = sub.add_parser(
        "transfer-check",
        parents=[server],
        help="does the study's transfer work: each optimum's drift along width and depth, with a verdict",
    )
    tc.add_argument("--study", required=True, help="the study")
    tc.add_argument("--n-params", type=float, help="target parameters (for the cost of reusing the base optimum)")
    tc.add_argument("--tokens", type=float, help="target training tokens")
    tc.add_argument("--width", type=float, help="target width")
    tc.add_argument("--depth", type=float, help="target depth")
    tc.add_argument("--tolerance", type=float, help="|drift exponent| that still 'transfers' (default 0.1)")
    tc.add_argument("--fit-id", type=int, help="answer from this fit")
    tc.add_argument("--json", action="store_true", help="print the raw JSON answer")
    tc.set_defaults(func=cmd_transfer_check)

    sug = sub.add_parser(
        "suggest",
        parents=[server],
        help="the next proxy runs (for a FLOP budget), printed or handed to Optuna, a W&B sweep or a launcher",
    )
    sug.add_argument("--study", required=True, help="the study")
    sug.add_argument("--n-params", type=float, help="target parameters")
    sug.add_argument("--tokens", type=float, help="target training tokens")
    sug.add_argument("--width", type=float, help="target width (if the laws use it)")
    sug.add_argument("--depth", type=float, help="target depth (if the laws use it)")
    sug.add_argument(
        "--budget-flops", type=float, help="FLOPs to spend (6·N·D per run); without it: today's suggestions"
    )
    sug.add_argument("--max-n-params", type=float, help="with --budget-flops: no proxy larger than this")
    sug.add_argument("--max-tokens", type=float, help="with --budget-flops: no proxy trained on more tokens")
    sug.add_argument("--count", type=int, help="at most this many scales (default 5; with a budget 40)")
    sug.add_argument(
        "--to",
        choices=("table", "json", "optuna", "wandb-sweep"),
        default="table",
        help="print a table (default), JSON runs for a launcher, enqueue Optuna trials, or write a W&B sweep",
    )
    sug.add_argument("--output", "-o", type=Path, help="--to json: file (default stdout); --to wandb-sweep: the YAML")
    sug.add_argument("--storage", help="--to optuna: the Optuna storage URL (e.g. sqlite:///optuna.db)")
    sug.add_argument("--optuna-study", help="--to optuna: the Optuna study to enqueue into (created if needed)")
    sug.add_argument("--program", help="--to wandb-sweep: the training script the sweep's agents run")
    sug.add_argument("--seq-len", type=int, help="sequence length to put in each run")
    sug.set_defaults(func=cmd_suggest)

    subm = sub.add_parser(
        "submit",
        parents=[server],
        help="post runs saved as JSON to a running server (e.g. a tracked run saved in ./hpscale-unsent/)",
    )
    subm.add_argument("paths", nargs="+", type=Path, metavar="FILE", help='JSON: {"study", "runs": [...]}, or runs')
    subm.add_argument("--study", help='the study (default: the file\'s own "study")')
    subm.set_defaults(func=cmd_submit)

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
