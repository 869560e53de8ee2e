"""Synthetic studies of several data *shapes* for the scale and load benchmarks (issue 18).

The cost of a fit must follow the size of the data, not its shape. Each shape is a way real
sweeps look; every run's loss comes from a known bowl around power-law optima:

- `sharp`:  6 model shapes × 2 token budgets, a 10-point LR grid over 3 decades × a 6-point
  batch grid, replicated; a sharp LR bowl (0.3·log²): the shape whose fit took 23 s at 100k
  runs (least squares stopped on its budget twice, then retried at 5×).
- `flat`:   the same grid with a flat bowl (0.01·log² in lr): optima barely resolved.
- `sparse`: no grid: every run draws its own log-uniform lr and batch (no two runs alike,
  nothing to pool), 8 scales.
- `steplaw`: 8 model sizes × 10 learning rates × 5 batch sizes (bench/scale.py's former
  generator): a moderate bowl on a replicated grid.
- `scales40`: 8 model sizes × 5 token budgets (40 scales), the sharp shape's grid and bowl.

`columns(shape, n_runs, seed)` gives numpy columns (run_key, n_params, tokens, width, depth,
learning_rate, batch_size, final_loss, seed); `write_csv` writes them for `hpscale import`.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

SHAPES = ("sharp", "flat", "sparse", "steplaw")
# Not among the scale bench's default shapes: 40 scales, for bench/load.py's refit-while-answering figure.
ALL_SHAPES = (*SHAPES, "scales40")
COLUMNS = ["run_key", "n_params", "tokens", "width", "depth", "learning_rate", "batch_size", "final_loss", "seed"]


def _grid_scales(shapes: list[tuple[int, int]], budgets: tuple[float, ...]) -> list[tuple[float, float, int, int]]:
    out = []
    for width, depth in shapes:
        n_params = 12.0 * width * width * depth
        out += [(n_params, m * n_params, width, depth) for m in budgets]
    return out


def columns(shape: str, n_runs: int, seed: int = 0) -> dict[str, np.ndarray]:
    """`n_runs` runs of `shape` (see the module docstring) as numpy columns.

    loss = 1.8 + 400/N^0.34 [+ 100/D^0.2 for scales40] + c_lr·log²(lr/lr*) + c_bs·log²(bs/bs*) + noise, with
    lr* = 3e-3·(N/1e8)^-0.3 and bs* = 256·(D/2e9)^0.3 (bench/scale.py's surface).
    """
    rng = np.random.default_rng(seed)
    i = np.arange(n_runs)
    if shape in ("sharp", "flat", "steplaw", "scales40"):
        if shape == "scales40":
            sizes = list(zip((256, 320, 384, 512, 640, 768, 1024, 1280), (4, 5, 6, 8, 10, 12, 16, 20)))
            scales = _grid_scales(sizes, (5.0, 10.0, 20.0, 40.0, 80.0))
            n_lr, n_bs, decades = 10, 6, 3.0
        elif shape == "steplaw":
            scales = [
                (12.0 * w * w * d, 240.0 * w * w * d, w, d) for w, d in ((256 * 2**k, 4 + 2 * k) for k in range(8))
            ]
            n_lr, n_bs, decades = 10, 5, 2.5
        else:
            scales = _grid_scales(list(zip((256, 384, 512, 768, 1024, 1536), (4, 6, 8, 12, 16, 24))), (10.0, 40.0))
            n_lr, n_bs, decades = 10, 6, 3.0
        s = i % len(scales)
        lr = 1e-4 * 10 ** (decades * ((i // len(scales)) % n_lr) / (n_lr - 1))
        bs = 32.0 * 2.0 ** ((i // (len(scales) * n_lr)) % n_bs)
        curvature, noise = {
            "sharp": ((0.3, 0.03), 0.002),
            "scales40": ((0.3, 0.03), 0.002),
            "flat": ((0.01, 0.005), 0.002),
        }.get(shape, ((0.1, 0.03), 0.005))
    elif shape == "sparse":
        scales = _grid_scales([(256 * (k + 1), 4 + 2 * k) for k in range(4)], (10.0, 40.0))
        s = rng.integers(0, len(scales), n_runs)
        lr = np.exp(rng.uniform(math.log(1e-4), math.log(1e-1), n_runs))
        bs = np.round(np.exp(rng.uniform(math.log(16.0), math.log(2048.0), n_runs)))
        curvature, noise = (0.1, 0.03), 0.003
    else:
        raise ValueError(f"unknown shape {shape!r}; one of {ALL_SHAPES}")
    table = np.array(scales, dtype=float)
    n_params, tokens, width, depth = (table[s, k] for k in range(4))
    lr_star = 3e-3 * (n_params / 1e8) ** -0.3
    batch_star = 256.0 * (tokens / 2e9) ** 0.3
    # Only the 40-scale study's loss depends on the token budget: it is the one with a loss law.
    data_term = 100.0 / tokens**0.2 if shape == "scales40" else 0.0
    loss = 1.8 + 400.0 / n_params**0.34 + data_term + curvature[0] * np.log(lr / lr_star) ** 2
    loss = loss + curvature[1] * np.log(bs / batch_star) ** 2 + rng.normal(0.0, noise, n_runs)
    return {
        "run_key": np.array([f"{shape}{k}" for k in range(n_runs)], dtype=object),
        "n_params": n_params,
        "tokens": tokens,
        "width": width,
        "depth": depth,
        "learning_rate": lr,
        "batch_size": bs,
        "final_loss": np.round(loss, 6),
        "seed": i // 720,
    }


def write_csv(path: Path, shape: str, n_runs: int, seed: int = 0) -> None:
    """The runs of `columns(shape, n_runs, seed)` as a CSV `hpscale import` reads."""
    cols = columns(shape, n_runs, seed)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        for row in zip(
            cols["run_key"],
            *(cols[name].tolist() for name in ("n_params", "tokens")),
            *(cols[name].astype(int).tolist() for name in ("width", "depth")),
            cols["learning_rate"].tolist(),
            cols["batch_size"].astype(int).tolist(),
            cols["final_loss"].tolist(),
            cols["seed"].tolist(),
        ):
            writer.writerow(row)
