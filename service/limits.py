"""Every bound the service enforces, in one place (contract version 1.1, "Limits").

One set of limits serves run submission (HTTP and `hpscale import`) and recommendation
and suggestion targets: a value outside them is refused with 422 naming the field.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

# --- token scopes, weakest first: each includes the ones before it ------------------------
SCOPES: tuple[str, ...] = ("read", "write", "admin")
SCOPE_RANK: dict[str, int] = {scope: rank for rank, scope in enumerate(SCOPES)}

# --- requests ---------------------------------------------------------------------------
MAX_BATCH_RUNS = 10_000  # runs in one POST .../runs
DEFAULT_IMPORT_BATCH = 5_000  # runs per transaction of `hpscale import`
MAX_LOSS_CURVE_POINTS = 10_000  # points of one submitted curve (loss_curve, each of `curves`)
MAX_CURVE_SERIES = 16  # series in a run's `curves` besides the loss curve
# Points kept of a stored series: a longer one is downsampled (`service.run_curves`).
MAX_STORED_CURVE_POINTS = 1_000
MAX_EXTRA_KEYS = 256
# Distinct `extra` keys over all of a study's runs: each is a column of runs.csv, so a few
# writes of fresh keys would otherwise make every export of the study huge. Checked at
# submission (HTTP and `hpscale import`); a submission that would pass it is refused (422).
MAX_STUDY_EXTRA_KEYS = 512
MAX_BOOTSTRAP = 5_000  # resamples the server's HPSCALE_BOOTSTRAP may be
# What a POST .../fits may ask for (besides the server's own HPSCALE_BOOTSTRAP): each count
# is a separate stored fit of the same runs, so a caller must not be able to make thousands.
BOOTSTRAP_CHOICES: tuple[int, ...] = (0, 10, 20, 50, 100, 200, 500, 1000)
MAX_SUGGESTIONS = 50
MAX_PAGE_SIZE = 1_000
DEFAULT_PAGE_SIZE = 100
STUDY_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
TOKEN_NAME_MAX_LENGTH = 64

# --- what the database columns can hold ----------------------------------------------------
INT32_MAX = 2**31 - 1
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class Bound:
    """`low < value` (or `low <= value` when `low_inclusive`) and `value <= high`."""

    low: float
    high: float
    low_inclusive: bool = False

    def check(self, value: float) -> str | None:
        """None if `value` is inside; otherwise the reason, as a sentence fragment."""
        try:
            value = float(value)  # an int beyond ~1e308 overflows
        except OverflowError:
            return f"must be ≤ {self.high:g}"
        if not math.isfinite(value):
            return "must be a finite number"
        if self.low_inclusive and value < self.low:
            return f"must be ≥ {self.low:g}"
        if not self.low_inclusive and value <= self.low:
            return f"must be > {self.low:g}"
        if value > self.high:
            return f"must be ≤ {self.high:g}"
        return None


# The contract's limits for a run's fields and a target's quantities.
RUN_LIMITS: Mapping[str, Bound] = {
    "n_params": Bound(0, 1e15),
    "tokens": Bound(0, 1e16),
    "width": Bound(0, 1e6),
    "depth": Bound(0, 1e5),
    "batch_size": Bound(0, 1e8),
    "seq_len": Bound(0, 1e7),
    "learning_rate": Bound(0, 10),
    "weight_decay": Bound(0, 100, low_inclusive=True),
}
# final_loss > 0 (cross-entropy-like) unless the study has `loss_can_be_negative`.
FINAL_LOSS = Bound(0, math.inf)

# Target quantities are counts ≥ 1 (which also keeps denormals such as 5e-324 from
# underflowing in log space), capped by the run limits above.
TARGET_LIMITS: Mapping[str, Bound] = {
    name: Bound(1, RUN_LIMITS[name].high, low_inclusive=True)
    for name in ("n_params", "tokens", "width", "depth", "batch_size", "seq_len")
}
MAX_COMPUTE = 1e35  # FLOPs; a compute target is ≥ 1 as well
MAX_BATCH_MULTIPLE = 1_000_000


def bootstrap_refusal(requested: int, default: int) -> str | None:
    """Why a fit may not use `requested` resamples (None: it may): one of the choices or the default."""
    if requested in BOOTSTRAP_CHOICES or requested == default:
        return None
    return f"must be one of {', '.join(map(str, BOOTSTRAP_CHOICES))} or the server's default ({default})"
