"""Nearest neighbours of many distinct points in O(n log n) (issue 18), for `fitting.optima`.

`kdtree_neighbours(Z, kk)` gives, per row of Z, the positions of its kk nearest *other* rows —
the same set as a stable argsort of the full distance matrix (ties broken by position). A
k-d tree (scipy.spatial.cKDTree) finds a few more than kk candidates per row; a row whose
candidates all tie with its kk-th (runs repeated at one point) asks again for twice as many,
until every run at that distance is among them. A sweep with every run at its own
hyperparameters (100k runs, 12.5k per scale) took 30 s as row-chunked all-pairs distances;
this takes well under a second.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

# Candidates asked of the tree beyond kk + 1 (the row itself): room to see a tie at the kk-th place.
_EXTRA = 4
# Most candidates held at once (rows × k): 4M pairs of distance and index, 64 MB.
_MAX_CANDIDATES = 4_000_000


def kdtree_neighbours(Z: np.ndarray, kk: int) -> np.ndarray:
    """(n, kk) positions of each row's kk nearest other rows of `Z` (Euclidean), ties by position."""
    n = Z.shape[0]
    if n <= 1 or kk <= 0:
        return np.zeros((n, max(kk, 0)), dtype=np.intp)
    tree = cKDTree(Z)
    out = np.empty((n, kk), dtype=np.intp)
    rows = np.arange(n)
    k = min(kk + 1 + _EXTRA, n)
    while rows.size:
        # Bounded memory: (rows × k) candidates at a time.
        step = max(1, _MAX_CANDIDATES // k)
        unresolved = [_resolve(tree, Z, rows[i : i + step], k, kk, n, out) for i in range(0, rows.size, step)]
        rows = np.concatenate(unresolved)
        k = min(2 * k, n)  # rows with more ties than candidates: ask for twice as many
    return out


def _resolve(tree: cKDTree, Z: np.ndarray, rows: np.ndarray, k: int, kk: int, n: int, out: np.ndarray) -> np.ndarray:
    """Fill `out` for the rows whose k candidates settle their kk nearest; the rows they do not."""
    dist, idx = tree.query(Z[rows], k=k)
    dist = np.asarray(dist, dtype=float).reshape(rows.size, k)
    idx = np.asarray(idx).reshape(rows.size, k)
    # Each row's own entry (distance 0, though another row at the same point may come first).
    other_d = np.where(idx == rows[:, None], np.inf, dist)
    order = _order_by_distance_then_position(other_d, idx)
    d_sorted = np.take_along_axis(other_d, order, axis=1)
    nearest = np.take_along_axis(idx, order, axis=1)[:, :kk]
    # The tree returned every row nearer than its farthest candidate; a row whose kk-th
    # distance reaches that farthest one may have ties the tree left out.
    settled = np.ones(rows.size, dtype=bool)
    if k < n:
        farthest = np.max(np.where(np.isfinite(d_sorted), d_sorted, -np.inf), axis=1)
        settled = farthest > d_sorted[:, kk - 1]
    out[rows[settled]] = nearest[settled]
    return rows[~settled]


def _order_by_distance_then_position(dist: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Per row, the column order sorting candidates by distance, then by position (stable ties)."""
    # Distances are non-negative floats: sort by position first, then stably by distance.
    by_position = np.argsort(idx, axis=1, kind="stable")
    d = np.take_along_axis(dist, by_position, axis=1)
    by_distance = np.argsort(d, axis=1, kind="stable")
    return np.take_along_axis(by_position, by_distance, axis=1)


def fill_crowded_points(
    order: np.ndarray, inverse: np.ndarray, counts: np.ndarray, kk: int, out: np.ndarray
) -> np.ndarray:
    """Rows at a point holding more than kk runs: their kk nearest are the point's other runs
    (distance 0), the first kk of them by position, written into `out`; which points those were.

    Row i is at point inverse[i]; `order` is `np.argsort(inverse, kind="stable")` (rows grouped by
    point, by position within it), the callers' own. Each of a point's first kk + 1 members gets
    the others of those kk + 1, every later member the first kk.
    """
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])
    crowded: np.ndarray = counts - 1 >= kk
    at = np.flatnonzero(crowded[inverse[order]])  # places in `order` of rows at crowded points
    base = start[inverse[order[at]]]
    rank = at - base  # each row's place among its point's members
    # Row j of `drop`: the member places 0..kk without j.
    drop = np.array([[c for c in range(kk + 1) if c != j] for j in range(kk + 1)], dtype=np.intp).reshape(kk + 1, kk)
    places = np.where((rank >= kk + 1)[:, None], np.arange(kk)[None, :], drop[np.minimum(rank, kk)])
    out[order[at]] = order[base[:, None] + places]
    return crowded


def grid_neighbours(points: np.ndarray, inverse: np.ndarray, counts: np.ndarray, kk: int) -> np.ndarray:
    """The same for rows on repeated points (row i is points[inverse[i]]) when the points are
    too many for their all-pairs distance matrix: a point with more than kk runs gives its runs
    each other; one with fewer asks a k-d tree of the points for the nearest points holding kk
    other runs (twice as many until every point at the kk-th run's distance is among them)."""
    n, n_points = inverse.size, points.shape[0]
    by_point = np.argsort(inverse, kind="stable")
    members = np.split(by_point, np.cumsum(counts)[:-1])  # by position
    out = np.empty((n, kk), dtype=np.intp)
    tree: cKDTree | None = None
    crowded = fill_crowded_points(by_point, inverse, counts, kk, out)
    for p in np.flatnonzero(~crowded).tolist():
        own = members[p]
        tree = tree if tree is not None else cKDTree(points)
        k = min(_EXTRA + kk + 1, n_points)
        while True:
            d, q = tree.query(points[p], k=k)
            d, q = np.atleast_1d(d), np.atleast_1d(q)
            order = np.lexsort((q, d))  # by distance, then by point (a stable argsort of distances)
            d, q = d[order], q[order]
            reached = np.cumsum(counts[q] - (q == p))
            if reached[-1] >= kk:
                t = d[np.searchsorted(reached, kk)]
                if k == n_points or d[-1] > t:
                    break
            if k == n_points:
                t = d[-1]
                break
            k = min(2 * k, n_points)
        inner = np.concatenate([members[x] for x in q[d < t]])  # holds `own`
        at_t = np.sort(np.concatenate([members[x] for x in q[d == t]]))
        tied = at_t[: kk - (inner.size - 1)]
        for i in own:
            out[i] = np.concatenate([inner[inner != i], tied])
    return out
