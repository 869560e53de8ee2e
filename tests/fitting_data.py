"""Loaders for the shared real data and a generator of synthetic sweeps with known laws."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from fitting.runs import COMPLETED, DIVERGED, RunTable

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
STEPLAW_SEQ_LEN = 2048.0
MARIN_SEQ_LEN = 4096.0
MARIN_DIVERGED = 6.0  # data README: losses above ~6 are diverged runs


def load_steplaw() -> RunTable:
    """steplaw_dense_proxy.csv as runs: `smooth loss` is the final loss, bs in sequences of 2,048 tokens."""
    with open(DATA / "steplaw_dense_proxy.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return RunTable.from_records(
        (
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
    )


def load_marin(optimizer: str = "adamw") -> RunTable:
    """marin_ablations.csv for one optimizer: the baseline and its lr, batch-size and weight-decay ablations.

    Ablations of other hyperparameters (betas, warmup, ε, …) change something the RunTable
    cannot represent, so they are left out. Runs with a loss above 6, or none, are diverged.
    """
    keep = {"baseline", "learning_rate", "train_batch_size", "weight_decay"}
    with open(DATA / "marin_ablations.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["optimizer"] == optimizer and r["param"] in keep]
    recs = []
    for r in rows:
        loss = float(r["loss"]) if r["loss"] not in ("", "NaN", "nan") else float("nan")
        ok = np.isfinite(loss) and loss < MARIN_DIVERGED
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
