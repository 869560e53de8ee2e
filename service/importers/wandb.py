"""Weights & Biases: offline run directories or a runs-table CSV export; no network, and
no `wandb` package needed to read them (they are YAML, JSON and CSV).

    hpscale import --from wandb wandb/offline-run-* --study S        # or: runs.csv

An offline run directory (`wandb/offline-run-<time>-<id>`, written by `wandb` with
WANDB_MODE=offline) holds the run's log `run-<id>.wandb` (what `wandb sync` uploads: config,
history, summary and exit code as protobuf records, read with the `wandb` package's own
message definitions); older `wandb` versions also wrote `files/config.yaml` (each key's
`value`) and `files/wandb-summary.json` (each metric's last value), read when present. A run
that exited with code 0 and has a loss is `completed` (`diverged` if that loss is NaN/inf);
one that crashed or has no loss is `failed`. A run log's history (`run.log(...)` rows) becomes
the run's curves: x is tokens when every row logs a tokens count (`tokens_seen`, `tokens`, …),
else the step; the final loss's name, or else the first logged name ending in "loss", is the
loss curve, every other logged number a named curve. In the runs-table CSV (the UI's "Export
as CSV"), `State` gives the status (finished → completed; crashed, failed, killed → failed;
running rows are skipped) and every other column is a name. Names map to run fields by the
common aliases (see `service.importers.common.ALIASES`); `--map` overrides. The run's display
name is kept in `extra.run_name`; a run without a weight decay has an unknown one (null). Run
key: `wandb:<run id>` (the CSV's `ID` column if present, else its `Name`).
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from service.errors import InvalidArgument
from service.importers.common import (
    ALIASES,
    RUN_NAME,
    check_mapping,
    check_required,
    field_sources,
    finite_points,
    flatten,
    to_run,
)
from service.limits import MAX_CURVE_SERIES, MAX_LOSS_CURVE_POINTS

_CSV_STATUS = {"finished": "completed", "crashed": "failed", "failed": "failed", "killed": "failed"}
_CSV_BOOKKEEPING = {"Name", "ID", "State", "Notes", "User", "Tags", "Created", "Runtime", "Sweep", "Group", "Job Type"}
_RUN_DIR = re.compile(r"^(?:offline-)?run-\d{8}_\d{6}-(?P<id>[a-z0-9]+)$")


def _config(path: Path) -> dict[str, Any]:
    import yaml

    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {} if path.exists() else {}
    # W&B writes each key as {"desc": ..., "value": ...}; plain YAML is accepted too.
    values = {k: (v["value"] if isinstance(v, dict) and "value" in v else v) for k, v in raw.items()}
    return flatten(values)


def _summary(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    # W&B writes NaN and Infinity as JSON's non-standard literals; Python reads them.
    return flatten(json.loads(path.read_text(encoding="utf-8")))


def run_directories(paths: Iterable[str | Path]) -> list[Path]:
    """The run directories in `paths`: each given run directory, and those inside a given
    `wandb/` directory (offline-run-*, run-*)."""
    found: list[Path] = []
    for given in map(Path, paths):
        if _RUN_DIR.match(given.name) or (given / "files").is_dir():
            found.append(given)
        elif given.is_dir():
            found.extend(sorted(p for p in given.iterdir() if p.is_dir() and _RUN_DIR.match(p.name)))
        else:
            raise InvalidArgument(f"{given}: not a W&B run directory, a wandb/ directory or a runs-table CSV")
    return found


# source run id, its names, status (None: from the loss), history rows, display name
Record = tuple[str, dict[str, Any], str | None, list[dict[str, Any]], str | None]


_BLOCK = 32768  # the run log is a LevelDB-style log: 32 KiB blocks of 7-byte-headed chunks
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _log_chunks(path: Path) -> Iterator[bytes]:
    """The records of a `run-<id>.wandb` log (file header ":W&B", key, version; then chunks of
    crc32 (4 bytes), length (2, little-endian), type (1) and data, never across a block)."""
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise InvalidArgument(f"{path}: not a W&B run log")
    position, pending = 7, b""
    while position + 7 <= len(data):
        left = _BLOCK - position % _BLOCK
        if left < 7:  # the block's zero-filled tail
            position += left
            continue
        length = int.from_bytes(data[position + 4 : position + 6], "little")
        kind = data[position + 6]
        chunk = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk


def _item_name(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def _from_run_log(path: Path) -> tuple[dict[str, Any], str, list[dict[str, Any]], str | None]:
    """Config and summary of a run from its binary log (what `wandb` offline writes since the
    files/config.yaml and wandb-summary.json stopped being written offline), its status (an
    exit record with code 0 → "completed" if it has a loss, otherwise "failed"), its history
    rows and its display name."""
    try:
        from wandb.proto import wandb_internal_pb2
    except ImportError:
        raise InvalidArgument(
            f"{path}: reading W&B run logs needs the wandb package: pip install 'hpscale[wandb]'"
        ) from None
    config: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    exit_code = None
    name = None
    for chunk in _log_chunks(path):
        record = wandb_internal_pb2.Record()  # type: ignore[attr-defined]
        record.ParseFromString(chunk)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update((_item_name(i), json.loads(i.value_json)) for i in record.run.config.update)
            name = record.run.display_name or name
        elif kind == "config":
            config.update((_item_name(i), json.loads(i.value_json)) for i in record.config.update)
        elif kind == "summary":
            summary.update((_item_name(i), json.loads(i.value_json)) for i in record.summary.update)
        elif kind == "history":
            row = {_item_name(i): json.loads(i.value_json) for i in record.history.item}
            summary.update(row)
            history.append(row)
        elif kind == "exit":
            exit_code = record.exit.exit_code
    return {**flatten(config), **flatten(summary)}, "completed" if exit_code == 0 else "failed", history, name


_TOKEN_NAMES = ALIASES["tokens"]


def history_curves(rows: list[dict[str, Any]], loss_name: str | None) -> dict[str, Any]:
    """`to_run`'s curve arguments from W&B history rows (see the module's docstring)."""
    if len(rows) < 2:
        return {}
    tokens = next((n for n in _TOKEN_NAMES if all(isinstance(r.get(n), (int, float)) for r in rows)), None)
    x_name = tokens or "_step"
    series: dict[str, list[tuple[Any, Any]]] = {}
    for position, row in enumerate(rows):
        x = row.get(x_name, position)
        for name, value in row.items():
            if name.startswith("_") or name == tokens or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) or value is None or value in ("NaN", "nan"):
                series.setdefault(name, []).append((x, math.nan if value is None else float(value)))
    curves = {name: finite_points(points, MAX_LOSS_CURVE_POINTS) for name, points in series.items()}
    curves = {name: points for name, points in curves.items() if len(points) >= 2}
    loss = loss_name if loss_name in curves else next((n for n in curves if n.lower().endswith("loss")), None)
    out: dict[str, Any] = {"curve_x": "tokens" if tokens else "steps"}
    if loss is not None:
        out["loss_curve"] = curves.pop(loss)
    out["curves"] = dict(sorted(curves.items())[:MAX_CURVE_SERIES])
    return out


def _from_directories(directories: list[Path]) -> list[Record]:
    records: list[Record] = []
    for directory in directories:
        match = _RUN_DIR.match(directory.name)
        run_id = match["id"] if match else directory.name
        files = directory / "files"
        logs = sorted(directory.glob("run-*.wandb"))
        if not (files / "config.yaml").exists() and logs:
            values, status, history, name = _from_run_log(logs[0])
            records.append((run_id, values, status, history, name))
            continue
        values = {**_config(files / "config.yaml"), **_summary(files / "wandb-summary.json")}
        records.append((run_id, values, None, [], None))  # status from the loss, below
    return records


def _from_csv(path: Path) -> list[Record]:
    records: list[Record] = []
    with path.open(newline="", encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            state = (row.get("State") or "finished").strip().lower()
            if state not in _CSV_STATUS:
                continue  # running: import it once it has finished
            run_id = (row.get("ID") or row.get("Name") or "").strip()
            if not run_id:
                raise InvalidArgument(f"{path}: a row without ID or Name (line {handle.name})")
            values = {k: v for k, v in row.items() if k not in _CSV_BOOKKEEPING and v not in (None, "")}
            records.append((run_id, values, _CSV_STATUS[state], [], (row.get("Name") or "").strip() or None))
    return records


def read_runs(
    paths: Iterable[str | Path], mapping: Mapping[str, str] | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """(source id, run) for every W&B run in the given offline directories or CSV exports."""
    mapping = dict(mapping or {})
    check_mapping(mapping)
    paths = list(paths)
    records: list[Record] = []
    csvs = [Path(p) for p in paths if str(p).endswith(".csv")]
    for path in csvs:
        if not path.is_file():
            raise InvalidArgument(f"{path}: no such file")
        records.extend(_from_csv(path))
    records.extend(_from_directories(run_directories(p for p in paths if not str(p).endswith(".csv"))))
    names = {name for _, values, *_ in records for name in values}
    sources = field_sources(names, mapping)
    check_required(sources, names, "W&B config or summary value")
    loss_name = sources.get("final_loss")
    rows = []
    for run_id, values, given_status, history, display_name in records:
        status = given_status or "completed"
        if status == "completed" and (loss_name not in values or values[loss_name] == ""):
            status = "failed"  # it ended without a loss (e.g. killed before the first eval)
        source_id = f"wandb:{run_id}"
        extra = {RUN_NAME: display_name[:1024]} if display_name else None
        run = to_run(
            values, sources, run_key=source_id, status=status, extra=extra, **history_curves(history, loss_name)
        )
        rows.append((source_id, run))
    return rows
