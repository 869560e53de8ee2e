"""The fitting engine's input: a study's runs as columns of numpy arrays.

`fitting/` never sees the database or HTTP objects; the app converts stored runs
into a `RunTable` (see `RunTable.from_records`) and hands it over.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

COMPLETED, DIVERGED, FAILED = "completed", "diverged", "failed"


@dataclass(frozen=True)
class RunTable:
    """One row per run. Unknown optional values are NaN (width, depth, seq_len, final_loss).

    `status` holds "completed", "diverged" or "failed"; `final_loss` is finite for
    completed runs. `weight_decay` is 0 when the run did not set it. `run_id` (the stored
    run's id, NaN when unknown) and `run_key` (the client's key, None when unknown) only
    name runs in the fit's messages (e.g. the outliers it left out); they are optional.
    """

    n_params: np.ndarray
    tokens: np.ndarray
    width: np.ndarray
    depth: np.ndarray
    seq_len: np.ndarray
    learning_rate: np.ndarray
    batch_size: np.ndarray
    weight_decay: np.ndarray
    final_loss: np.ndarray
    status: np.ndarray
    run_id: np.ndarray = field(default_factory=lambda: np.zeros(0))
    run_key: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=object))

    def __post_init__(self) -> None:
        n = len(self)
        if self.run_id.shape[0] != n:
            object.__setattr__(self, "run_id", np.full(n, np.nan))
        if self.run_key.shape[0] != n:
            object.__setattr__(self, "run_key", np.full(n, None, dtype=object))

    def __len__(self) -> int:
        return int(self.n_params.shape[0])

    @classmethod
    def from_records(cls, records: Iterable[Mapping[str, Any]], default_seq_len: float | None = None) -> RunTable:
        """Build from dicts with the contract's run field names (missing → NaN / defaults)."""
        rows = list(records)

        def column(name: str, default: float = np.nan) -> np.ndarray:
            return np.array([default if r.get(name) is None else float(r[name]) for r in rows], dtype=float)

        seq_default = np.nan if default_seq_len is None else float(default_seq_len)
        return cls(
            n_params=column("n_params"),
            tokens=column("tokens"),
            width=column("width"),
            depth=column("depth"),
            seq_len=column("seq_len", seq_default),
            learning_rate=column("learning_rate"),
            batch_size=column("batch_size"),
            weight_decay=column("weight_decay", 0.0),
            final_loss=column("final_loss"),
            status=np.array([r.get("status") or COMPLETED for r in rows], dtype=object),
            run_id=column("id"),
            run_key=np.array([None if r.get("run_key") is None else str(r["run_key"]) for r in rows], dtype=object),
        )

    def subset(self, mask: np.ndarray) -> RunTable:
        """The rows where `mask` (boolean or integer index array) selects."""
        return RunTable(**{name: getattr(self, name)[mask] for name in self.__dataclass_fields__})

    @property
    def completed(self) -> np.ndarray:
        """Boolean mask of completed runs with a finite loss."""
        mask: npt.NDArray[np.bool_] = (self.status == COMPLETED) & np.isfinite(self.final_loss)
        return mask

    def label(self, i: int) -> str:
        """How messages name run `i`: its run_key, else its id, else its row number."""
        if self.run_key[i] is not None:
            return f"run {self.run_key[i]!r}"
        if np.isfinite(self.run_id[i]):
            return f"run id {int(self.run_id[i])}"
        return f"row {i}"
