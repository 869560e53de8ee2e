"""Test helpers: the shared-data loaders (re-exported from `fitting.datasets`) and a generator of
synthetic sweeps with fixed known laws. Random-law studies for calibration are in `fitting.synthetic`."""

from __future__ import annotations

import numpy as np

from fitting.datasets import (  # noqa: F401  (re-exported for existing tests)
    MARIN_DIVERGED,
    MARIN_SEQ_LEN,
    STEPLAW_SEQ_LEN,
    data_dir,
    load_marin,
    load_steplaw,
)
from fitting.runs import COMPLETED, DIVERGED, RunTable

DATA = data_dir()


# Synthetic sweeps with known laws -------------------------------------------------------
TRUE_LR = {"const": -6.0, "n_params": -0.5, "tokens": 0.2}  # log lr* = c + a·log N/N0 + b·log D/D0
TRUE_BS = {"const": 5.0, "tokens": 0.5}
TRUE_WD = {"const": -2.3, "width": 0.5, "tokens": -0.3}
N0, D0, W0 = 1e8, 1e10, 512.0
SYN_H = np.array([[0.02, 0.006, 0.0], [0.006, 0.012, 0.0], [0.0, 0.0, 0.02]])  # log-loss curvature


def true_log_optimum(n_params: float, tokens: float, width: float) -> np.ndarray:
    ln, ld, lw = np.log(n_params / N0), np.log(tokens / D0), np.log(width / W0)
    return np.array(
        [
            TRUE_LR["const"] + TRUE_LR["n_params"] * ln + TRUE_LR["tokens"] * ld,
            TRUE_BS["const"] + TRUE_BS["tokens"] * ld,
            TRUE_WD["const"] + TRUE_WD["width"] * lw + TRUE_WD["tokens"] * ld,
        ]
    )


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
                            recs.append(
                                {
                                    "n_params": n,
                                    "tokens": tokens,
                                    "width": width,
                                    "depth": depth,
                                    "seq_len": 1024,
                                    "learning_rate": np.exp(a),
                                    "batch_size": np.exp(b),
                                    "weight_decay": np.exp(c),
                                    "final_loss": None if div else loss,
                                    "status": DIVERGED if div else COMPLETED,
                                }
                            )
    return RunTable.from_records(recs)
