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


# Synthetic sweeps with known laws -------------------------------------------------------
TRUE_LR = {"const": -6.0, "n_params": -0.5, "tokens": 0.2}  # log lr* = c + a·log N/N0 + b·log D/D0
TRUE_BS = {"const": 5.0, "tokens": 0.5}
TRUE_WD = {"const": -2.3, "width": 0.5, "tokens": -0.3}
N0, D0, W0 = 1e8, 1e10, 512.0
SYN_H = np.array([[0.02, 0.006, 0.0], [0.006, 0.012, 0.0], [0.0, 0.0, 0.02]])  # log-loss curvature


def true_log_optimum(n_params: float, tokens: float, width: float) -> np.ndarray:
    ln, ld, lw = np.log(n_params / N0), np.log(tokens / D0), np.log(width / W0)
    return np.array([
        TRUE_LR["const"] + TRUE_LR["n_params"] * ln + TRUE_LR["tokens"] * ld,
        TRUE_BS["const"] + TRUE_BS["tokens"] * ld,
        TRUE_WD["const"] + TRUE_WD["width"] * lw + TRUE_WD["tokens"] * ld,
    ])


def synthetic_sweep(seed: int, *, keep: float = 0.7, noise: float = 0.001) -> RunTable:
    """Incomplete (lr × bs × wd) grids over width × depth × tokens, bowls centred on the TRUE_* laws.

    Grid points are offset from the optimum at random; `keep` of them survive; runs with
    lr above 4× the optimum diverge; loss noise is `noise` (relative).
    """
    rng = np.random.default_rng(seed)
    recs = []
    for width in (256.0, 512.0, 1024.0):
        for depth in (4.0, 12.0):
            n = 12.0 * depth * width**2
            for tokens in (20 * n, 80 * n):
                mu = true_log_optimum(n, tokens, width)
                l0 = 1.7 + 400 / n**0.3 + 400 / tokens**0.3
                glr = mu[0] + np.log(2.0) * (np.arange(6) - 2.5) + rng.uniform(-0.35, 0.35)
                gbs = mu[1] + np.log(2.0) * (np.arange(4) - 1.5) + rng.uniform(-0.35, 0.35)
                gwd = mu[2] + np.log(2.0) * (np.arange(4) - 1.5) + rng.uniform(-0.35, 0.35)
                for a in glr:
                    for b in gbs:
                        for c in gwd:
                            if rng.random() > keep:
                                continue
                            z = np.array([a, b, c]) - mu
                            f = 0.5 * z @ SYN_H @ z + 0.002 * z[0] ** 3
                            div = z[0] > np.log(4.0)
                            loss = l0 * np.exp(f) * (1 + noise * rng.standard_normal())
                            recs.append({"n_params": n, "tokens": tokens, "width": width, "depth": depth, "seq_len": 1024,
                                         "learning_rate": np.exp(a), "batch_size": np.exp(b), "weight_decay": np.exp(c),
                                         "final_loss": None if div else loss, "status": DIVERGED if div else COMPLETED})
    return RunTable.from_records(recs)
