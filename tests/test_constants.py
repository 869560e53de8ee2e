"""Each constant has one home (issue 9): the copies that must exist agree, stray literals do not return."""

from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path
from statistics import NormalDist

from fitting.common import LEVEL, Z90
from hpscale.client import MAX_BATCH
from service.limits import MAX_BATCH_RUNS

ROOT = Path(__file__).resolve().parents[1]
CODE = ("app", "service", "store", "fitting", "hpscale", "bench", "migrations")


def number_literals(value: float) -> list[str]:
    """Places in the code (not comments or docstrings) that write `value` as a number literal."""
    found = []
    for package in CODE:
        for path in sorted((ROOT / package).rglob("*.py")):
            source = path.read_text(encoding="utf-8")
            for tok in tokenize.generate_tokens(io.StringIO(source).readline):
                if tok.type != tokenize.NUMBER:
                    continue
                number = ast.literal_eval(tok.string)  # 0o600, 1e-3, 10_000, 2j …
                if isinstance(number, (int, float)) and abs(number - value) < 1e-3 * value:
                    found.append(f"{path.relative_to(ROOT)}:{tok.start[0]}")
    return found


def test_the_client_copy_of_the_batch_limit_matches_the_server() -> None:
    # hpscale.client imports nothing server-side, so it keeps its own copy (see its comment).
    assert MAX_BATCH == MAX_BATCH_RUNS


def test_the_interval_z_is_derived_from_the_level_only() -> None:
    assert NormalDist().inv_cdf(0.5 + LEVEL / 2) == Z90
    assert number_literals(1.645) == [], "write fitting.common.Z90 instead of the 90% z literal"
