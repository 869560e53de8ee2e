"""A fit's input: the study (its data version) and its runs, read in one consistent snapshot.

SQLite reads keyset pages of row tuples (`store.queries.fit_input_chunks`) into numpy
columns chunk by chunk. PostgreSQL reads by COPY (`store.queries.fit_input_copy`): the
numeric columns as fixed-width binary rows that numpy reads in one call, the run keys as one
text block, so a million runs cost no Python object per value. Either way no per-run dict
ever exists (a million of them took over a GB), and `run_table` gives the same RunTable.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np

from fitting.runs import RunTable
from store import queries
from store.db import Engine, snapshot_connection
from store.models import Study

_FLOAT_DEFAULTS = {"seq_len": math.nan, "weight_decay": 0.0}
# COPY's binary format: an 11-byte signature, flags, a header extension; rows; a -1 trailer.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00"


def read_snapshot(engine: Engine, study_id: int) -> tuple[Study, RunTable]:
    """The study and its runs, read in one snapshot: the RunTable is exactly the runs of
    the study's `data_version`. Each run carries its `id` and `run_key`, so a fit can name the
    runs it leaves out."""
    with snapshot_connection(engine) as conn:
        study = queries.get_study_by_id(conn, study_id)
        if conn.dialect.name == "postgresql":
            table = copy_table(*queries.fit_input_copy(conn, study_id), study.seq_len)
        else:
            table = run_table(queries.fit_input_chunks(conn, study_id), study.seq_len)
    return study, table


def _columns_to_table(columns: dict[str, np.ndarray]) -> RunTable:
    return RunTable(
        n_params=columns["n_params"],
        tokens=columns["tokens"],
        width=columns["width"],
        depth=columns["depth"],
        seq_len=columns["seq_len"],
        learning_rate=columns["learning_rate"],
        batch_size=columns["batch_size"],
        weight_decay=columns["weight_decay"],
        final_loss=columns["final_loss"],
        status=columns["status"],
        run_id=columns["id"],
        run_key=columns["run_key"],
    )


def run_table(chunks: Iterable[list[tuple[Any, ...]]], default_seq_len: float | None) -> RunTable:
    """`RunTable.from_records` of row tuples (`queries.FIT_INPUT_COLUMNS`), built chunk by chunk
    into numpy columns: each chunk becomes one structured array in a single C pass (None → NaN
    in the numeric fields), not a transposition and a conversion per column (about 1 s less per
    million runs)."""
    names = queries.FIT_INPUT_COLUMNS
    row = np.dtype([(name, object if name == "run_key" else float) for name in names])  # status: its code
    parts = [np.array(rows, dtype=row) for rows in chunks]
    table = np.concatenate(parts) if parts else np.zeros(0, dtype=row)
    columns = {name: np.ascontiguousarray(table[name]) for name in names}
    defaults = {**_FLOAT_DEFAULTS, "seq_len": math.nan if default_seq_len is None else float(default_seq_len)}
    for name, default in defaults.items():
        if not math.isnan(default):
            columns[name][np.isnan(columns[name])] = default
    columns["status"] = _status_names(columns["status"])
    return _columns_to_table(columns)


def _status_names(codes: np.ndarray) -> np.ndarray:
    """Status codes (indexes in `queries.FIT_STATUS_CODES`) as the status strings, one object each."""
    names = np.array([*queries.FIT_STATUS_CODES, "unknown"], dtype=object)
    return names[np.clip(codes.astype(np.intp), 0, len(names) - 1)]


def copy_table(binary: bytes | bytearray, keys: bytes | bytearray, default_seq_len: float | None) -> RunTable:
    """The RunTable of `queries.fit_input_copy`'s two COPY outputs (same rows, same order)."""
    numbers = queries.FIT_INPUT_NUMBERS
    # Each row: int16 field count, then per field an int32 length and the value (big-endian).
    fields = [("count", ">i2")]
    for name in numbers:
        fields += [(f"{name}_len", ">i4"), (name, ">f8")]
    fields += [("status_len", ">i4"), ("status", ">i2")]
    row = np.dtype(fields)
    if not binary.startswith(_COPY_SIGNATURE):
        raise ValueError("not COPY binary output")
    extension = int.from_bytes(binary[15:19], "big")
    body = memoryview(binary)[19 + extension : len(binary) - 2]  # without header and trailer
    if len(body) % row.itemsize:
        raise ValueError("COPY rows are not the expected fixed width")
    rows = np.frombuffer(body, dtype=row)
    columns: dict[str, np.ndarray] = {name: rows[name].astype(float) for name in numbers}
    defaults = {**_FLOAT_DEFAULTS, "seq_len": math.nan if default_seq_len is None else float(default_seq_len)}
    for name, default in defaults.items():
        if not math.isnan(default):
            column = columns[name]
            column[np.isnan(column)] = default
    columns["status"] = _status_names(rows["status"])
    columns["run_key"] = _text_column(keys, len(rows))
    return _columns_to_table(columns)


_ESCAPE = re.compile(rb"\\(?:([0-7]{1,3})|x([0-9a-fA-F]{1,2})|(.))", re.DOTALL)
_ESCAPED = {b"b": b"\b", b"f": b"\f", b"n": b"\n", b"r": b"\r", b"t": b"\t", b"v": b"\v"}


def _unescape(match: re.Match[bytes]) -> bytes:
    octal, hexa, char = match.groups()
    if octal:
        return bytes([int(octal, 8) & 0xFF])
    if hexa:
        return bytes([int(hexa, 16)])
    return _ESCAPED.get(char, char)


def _text_column(text: bytes | bytearray, n: int) -> np.ndarray:
    """One COPY text column (one value per line, `\\N` for NULL) as an object array of str|None."""
    values = text.decode("utf-8").split("\n")
    if values and values[-1] == "":
        values.pop()
    if len(values) != n:
        raise ValueError(f"COPY gave {len(values)} run keys for {n} runs")
    out = np.array(values, dtype=object)
    for i in [i for i, v in enumerate(values) if "\\" in v]:  # NULL, or escaped characters
        out[i] = None if values[i] == "\\N" else _ESCAPE.sub(_unescape, values[i].encode("utf-8")).decode("utf-8")
    return out
