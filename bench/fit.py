"""Wall time of a full `fit_study` of the Step Law data with 1,000 bootstrap resamples, on one core.

Baseline in the same run: the Step Law procedure (plain least squares over the near-optimal
runs) on the same data. Run: python bench/fit.py
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.timing import best_of
from fitting.backtest import steplaw_procedure
from fitting.datasets import load_steplaw
from fitting.study_fit import fit_study


def main() -> None:
    runs = load_steplaw()
    base = best_of(lambda: steplaw_procedure(runs), 20)
    full = best_of(lambda: fit_study(runs, bootstrap=1000), 2)
    no_loss = best_of(lambda: fit_study(runs, bootstrap=1000, loss_law=False), 2)
    print(f"runs: {len(runs)}")
    print(f"fit_study(bootstrap=1000), one core:            {full:.3f} s")
    print(f"  of which without the loss law (fitting/loss_law): {no_loss:.3f} s")
    print(f"baseline: Step Law procedure least squares:       {base * 1e3:.2f} ms  (ratio {full / base:.0f}×)")


if __name__ == "__main__":
    main()
