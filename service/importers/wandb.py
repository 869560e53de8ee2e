"""Weights & Biases: offline run directories or a runs-table CSV export; no network, and
no `wandb` package needed to read them (they are YAML, JSON and CSV).

    hpscale import --from wandb wandb/offline-run-* --study S        # or: runs.csv

An offline run directory (`wandb/offline-run-<time>-<id>`, written by `wandb` with
WANDB_MODE=offline) holds `files/config.yaml` (the hyperparameters: each key's `value`)
and `files/wandb-summary.json` (each metric's last value). A directory whose summary has a
loss is `completed` (`diverged` if that loss is NaN/inf); one without (a crash before the
end) is `failed`. In the runs-table CSV (the UI's "Export as CSV"), `State` gives the status
(finished → completed; crashed, failed, killed → failed; running rows are skipped) and
every other column is a name. Names map to run fields by the common aliases (see
`service.importers.common.ALIASES`); `--map` overrides. Run key: `wandb:<run id>` (the
CSV's `ID` column if present, else its `Name`).
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from service.errors import InvalidArgument
from service.importers.common import check_mapping, check_required, field_sources, flatten, to_run

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


Record = tuple[str, dict[str, Any], str | None]  # source run id, its names, status (None: from the loss)


def _from_directories(directories: list[Path]) -> list[Record]:
    records: list[Record] = []
    for directory in directories:
        match = _RUN_DIR.match(directory.name)
        run_id = match["id"] if match else directory.name
        files = directory / "files"
        values = {**_config(files / "config.yaml"), **_summary(files / "wandb-summary.json")}
        records.append((run_id, values, None))  # status from the loss, below
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
            records.append((run_id, values, _CSV_STATUS[state]))
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
    names = {name for _, values, _ in records for name in values}
    sources = field_sources(names, mapping)
    check_required(sources, names, "W&B config or summary value")
    loss_name = sources.get("final_loss")
    rows = []
    for run_id, values, given_status in records:
        status = given_status or ("completed" if loss_name in values else "failed")
        source_id = f"wandb:{run_id}"
        rows.append((source_id, to_run(values, sources, run_key=source_id, status=status)))
    return rows
