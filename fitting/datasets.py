"""Loaders for the shared real data (`../shared/data/`, never copied into the project).

The data directory is `$HPSCALE_SHARED_DATA` when that is set, else `<repo>/../shared/data`
(the checkout's sibling `shared/data`). It is resolved on every call, so a process can point
the loaders elsewhere by setting the variable (tests do). Each file is read in its source's
own format (see `shared/data/README.md`). Pure csv/numpy: no web or database imports.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path

import numpy as np

from fitting.runs import COMPLETED, DIVERGED, RunTable

ENV_VAR = "HPSCALE_SHARED_DATA"
DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STEPLAW_FILE = "steplaw_dense_proxy.csv"
MARIN_FILE = "marin_ablations.csv"
STEPLAW_SEQ_LEN = 2048.0
MARIN_SEQ_LEN = 4096.0
MARIN_DIVERGED = 6.0  # data README: losses above ~6 are diverged runs


def data_dir() -> Path:
    """`$HPSCALE_SHARED_DATA` if set (and non-empty), else `<repo>/../shared/data`."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_DATA


def load_steplaw(path: str | os.PathLike[str] | None = None) -> RunTable:
    """steplaw_dense_proxy.csv as runs: `smooth loss` is the final loss, bs in sequences of 2,048 tokens."""
    with open(Path(path) if path is not None else data_dir() / STEPLAW_FILE, newline="") as f:
        rows = list(csv.DictReader(f))
    return RunTable.from_records(
        {
            "n_params": r["N"],
            "tokens": r["D"],
            "width": r["h"],
            "depth": r["numl"],
            "seq_len": STEPLAW_SEQ_LEN,
            "learning_rate": r["lr"],
            "batch_size": r["bs"],
            "final_loss": r["smooth loss"],
        }
        for r in rows
    )


def load_marin(optimizer: str = "adamw", path: str | os.PathLike[str] | None = None) -> RunTable:
    """marin_ablations.csv for one optimizer: the baseline and its lr, batch-size and weight-decay ablations.

    Ablations of other hyperparameters (betas, warmup, ε, …) change something the RunTable
    cannot represent, so they are left out. Runs with a loss above 6, or none, are diverged.
    """
    keep = {"baseline", "learning_rate", "train_batch_size", "weight_decay"}
    with open(Path(path) if path is not None else data_dir() / MARIN_FILE, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["optimizer"] == optimizer and r["param"] in keep]
    recs = []
    for r in rows:
        loss = float(r["loss"]) if r["loss"] not in ("", "NaN", "nan") else float("nan")
        ok = bool(np.isfinite(loss) and loss < MARIN_DIVERGED)
        recs.append(
            {
                "n_params": r["non_embedding_params"],
                "tokens": r["tokens"],
                "width": r["hidden_dim"],
                "depth": r["num_layers"],
                "seq_len": MARIN_SEQ_LEN,
                "learning_rate": r["cfg_learning_rate"],
                "batch_size": r["cfg_train_batch_size"],
                "weight_decay": r["cfg_weight_decay"],
                "final_loss": loss if ok else None,
                "status": COMPLETED if ok else DIVERGED,
            }
        )
    return RunTable.from_records(recs)


__all__ = [
    "DEFAULT_DATA",
    "ENV_VAR",
    "MARIN_DIVERGED",
    "MARIN_SEQ_LEN",
    "STEPLAW_SEQ_LEN",
    "data_dir",
    "load_marin",
    "load_steplaw",
]
