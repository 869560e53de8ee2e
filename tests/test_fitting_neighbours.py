"""`fitting.optima.nearest_neighbours` (issue 11): the same neighbour sets as a stable argsort of
the full distance matrix, without ever holding that matrix for large scales."""

from __future__ import annotations

import numpy as np
import pytest

from fitting import optima
from fitting.optima import nearest_neighbours


def by_full_matrix(Z: np.ndarray, kk: int) -> np.ndarray:
    D = np.sqrt(((Z[:, None, :] - Z[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(D, np.inf)
    return np.argsort(D, axis=1, kind="stable")[:, :kk]


@pytest.mark.parametrize(
    "kind",
    ["grid with repeats", "few runs per point", "continuous", "repeats on many points", "ties on many points", "small"],
)
@pytest.mark.parametrize("kk", [1, 8])
def test_neighbour_sets_equal_the_full_matrix(kind: str, kk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # The large-input paths start at 40 rows / 40 distinct points here (2,000 in service),
    # so that small arrays exercise them.
    monkeypatch.setattr(optima, "_DENSE_ROWS", 40)
    monkeypatch.setattr(optima, "_GRID_POINTS", 40)
    monkeypatch.setattr(optima, "_DENSE_NEIGHBOURS", 40)
    rng = np.random.default_rng(len(kind) + kk)
    if kind == "grid with repeats":  # many runs per grid point: neighbours at distance 0
        Z = rng.integers(0, 3, size=(500, 3)).astype(float)
    elif kind == "few runs per point":  # neighbours at the nearest other grid points, ties by position
        Z = rng.integers(0, 3, size=(70, 3)).astype(float)
    elif kind == "continuous":  # every point distinct: the k-d tree
        Z = rng.normal(size=(300, 3))
    elif kind == "repeats on many points":  # repeated on more points than the dense grid path takes
        Z = rng.integers(0, 60, size=(900, 1)).astype(float)
    elif kind == "ties on many points":  # the k-d tree with more ties at a distance than it first asks for
        Z = rng.integers(0, 60, size=(200, 1)).astype(float)
    else:
        Z = rng.integers(0, 4, size=(30, 3)).astype(float)
    got = np.sort(nearest_neighbours(Z, kk), axis=1)
    assert got.shape == (Z.shape[0], kk)
    assert (got == np.sort(by_full_matrix(Z, kk), axis=1)).all()
