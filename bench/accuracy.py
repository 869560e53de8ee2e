"""Accuracy and calibration of the fitting engine on data it never saw, with baselines from the same run.

Run: python bench/accuracy.py [--quick] [--seeds N] [--engines current,1382cba,b0b223e] [--held-out]

Every figure is a prediction for settings the fit did not see, scored against what those
settings measured (real files) or against the known truth (synthetic studies):

a. Shared real files, leave-source-out. No prior is taken from the source being scored: on
   the Step Law file every prior citing Step Law is off (`exclude_prior_sources=("steplaw",)`);
   the in-sample figure (published priors on) is printed beside it and marked as such.
   Step Law splits: two smallest sizes → 429M/537M, N < 5e8 → 537M, token-forward (each size's
   two smallest budgets → its larger ones), both (N < 5e8 and the two smallest budgets → 537M),
   leave-one-size-out. Regret = loss at the predicted (lr, bs) read on the held-out setting's own
   sweep (`fitting.backtest.RegretSurface`) over its best, minus 1. Coverage: whether the 90%
   intervals hold the measured optimum (the held-out setting's best run).
   Marin file (11 optimizers, coordinate-wise ablations): forward in size (130M, 300M → larger)
   and in tokens (1×, 2× Chinchilla → 4×, 8×); regret along the held-out setting's learning-rate
   line (other hyperparameters at its baseline; the engines condition on that batch).
b. Synthetic studies whose true exponents are drawn independently of the prior centres
   (`fitting.synthetic`, kinds sp / coarse ×2 grids with edge optima / fixed-batch token horizon
   / μP): 90% coverage of the true optimum at 4× and 16× beyond the proxies, and exact regret.
   Seeds 0…N−1 (and 1000…1019) were looked at while developing the engine; `--held-out` adds
   seeds 2000…2000+N−1, which were not.
c. Each engine beside the simple baselines every user has, on the same splits: reuse the
   largest proxy's best run, a plain refit of the per-scale best runs (least squares of log h
   on log N and log D), the Step Law procedure and the published formula (in-sample on the
   Step Law file). Engines: `current` (this checkout), and git revisions (e.g. 1382cba, the
   engine before priors; b0b223e, last turn's) run in a subprocess (`bench/engine_worker.py`).
d. One absurd run (loss 0.5 in the Step Law file); three runs at one scale; fit time on one core.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import math
import pickle
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

import numpy as np

from bench.engine_worker import AXES, run_jobs
from bench.timing import best_of
from fitting.backtest import RegretSurface, steplaw_procedure, steplaw_published
from fitting.datasets import MARIN_FILE, STEPLAW_SEQ_LEN, data_dir, load_marin, load_steplaw
from fitting.optima import Scale, group_scales
from fitting.runs import RunTable
from fitting.study_fit import fit_study, predict
from fitting.synthetic import KINDS, lr_only_study, random_study

COVERAGE_BAND = (0.80, 0.97)
HELD_OUT = 2000  # first synthetic seed never looked at while developing (0… and 1000… were)
FIT_TIME_TARGET = 2.0
OUTLIER_TARGET = 0.02
TARGET_7B = {"n_params": 7e9, "tokens": 1.4e12, "width": 4096.0, "depth": 32.0}
SCALE_KEYS = ("n_params", "tokens", "width", "depth")
MARIN_OPTIMIZERS = ("adamw", "nadamw", "muon", "lion", "mars", "soape", "kron", "mini", "sophia", "cautious", "scion")
SUMMARY: list[tuple[str, str]] = []


def _pct(x: float | None, nd: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{nd}f}%"


# --- the methods ------------------------------------------------------------------------------
# A split: training runs, study options, held-out targets with a scorer each (settings → regret)
# and, where known, the optimum the intervals should hold.
@dataclass
class Target:
    scale: dict[str, float]
    score: Callable[[Mapping[str, float | None]], float]
    # axis → the true optimum, or the measured one: a value, or a (low, high) range the interval must overlap
    truth: dict[str, float | tuple[float, float]] = field(default_factory=dict)
    batch_size: float | None = None  # condition the engines' learning rate on this batch


@dataclass
class Split:
    group: str
    name: str
    train: RunTable
    targets: list[Target]
    options: dict[str, Any] = field(default_factory=dict)
    in_sample_options: dict[str, Any] | None = None  # the published-prior fit, reported beside


@dataclass
class Outcome:
    """Per target: settings predicted (None: the method failed there) and 90% intervals (engines)."""

    settings: list[dict[str, float | None] | None]
    intervals: list[dict[str, tuple[float, float, float] | None]]
    error: str | None = None


Baseline = Callable[[RunTable, Sequence[Target]], list[dict[str, float | None]]]


def _best_runs(train: RunTable) -> tuple[tuple[Scale, ...], np.ndarray]:
    """Per scale, the index of its best completed run (−1 if none)."""
    scales, sidx = group_scales(train)
    best = np.full(len(scales), -1)
    ok = train.completed
    for s in range(len(scales)):
        m = np.flatnonzero((sidx == s) & ok)
        if m.size:
            best[s] = m[np.argmin(train.final_loss[m])]
    return scales, best


def reuse_largest(train: RunTable, targets: Sequence[Target]) -> list[dict[str, float | None]]:
    """The best run of the largest training scale (by n_params, then tokens), reused everywhere."""
    scales, best = _best_runs(train)
    order = sorted(
        (s for s in range(len(scales)) if best[s] >= 0), key=lambda s: (scales[s].n_params, scales[s].tokens)
    )
    i = best[order[-1]]
    hp = {
        "learning_rate": train.learning_rate[i],
        "batch_size": train.batch_size[i],
        "weight_decay": train.weight_decay[i],
    }
    return [dict(hp) for _ in targets]


def refit_optima(train: RunTable, targets: Sequence[Target]) -> list[dict[str, float | None]]:
    """Least squares of each scale's best run's log h on the log scale variables that vary (N, D; μP: width too)."""
    scales, best = _best_runs(train)
    keep = [s for s in range(len(scales)) if best[s] >= 0]
    cols = ["n_params", "tokens"]
    X = np.column_stack([[1.0] * len(keep)] + [[math.log(getattr(scales[s], c)) for s in keep] for c in cols])
    coefs = {
        a: np.linalg.lstsq(X, np.log(np.maximum(getattr(train, a)[best[keep]], 1e-12)), rcond=None)[0] for a in AXES
    }
    out = []
    for t in targets:
        x = np.array([1.0] + [math.log(t.scale[c]) for c in cols])
        out.append({a: float(math.exp(x @ coefs[a])) for a in AXES})
    return out


def steplaw_refit(train: RunTable, targets: Sequence[Target]) -> list[dict[str, float | None]]:
    pred = steplaw_procedure(train)
    return [dict(zip(("learning_rate", "batch_size"), pred(Scale(*(t.scale[k] for k in SCALE_KEYS))))) for t in targets]


def steplaw_formula(train: RunTable, targets: Sequence[Target]) -> list[dict[str, float | None]]:
    pred = steplaw_published(STEPLAW_SEQ_LEN)(train)
    return [dict(zip(("learning_rate", "batch_size"), pred(Scale(*(t.scale[k] for k in SCALE_KEYS))))) for t in targets]


# --- engines: the current one in-process, git revisions in a subprocess ------------------------
_EXTRACTED: dict[str, Path] = {}


def _revision_dir(rev: str) -> Path:
    if rev not in _EXTRACTED:
        data = subprocess.run(
            ["git", "-C", str(_ROOT), "archive", rev, "fitting"], capture_output=True, check=True, timeout=60
        ).stdout
        d = Path(tempfile.mkdtemp(prefix=f"hpscale-engine-{rev}-"))
        with tarfile.open(fileobj=BytesIO(data)) as tar:
            tar.extractall(d, filter="data")
        _EXTRACTED[rev] = d
    return _EXTRACTED[rev]


def run_engine(engine: str, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if engine == "current":
        return run_jobs(jobs)
    env = {**os.environ, "PYTHONPATH": str(_revision_dir(engine))}
    proc = subprocess.run(
        [sys.executable, str(_ROOT / "bench" / "engine_worker.py")],
        input=pickle.dumps(jobs),
        capture_output=True,
        env=env,
        check=False,
        timeout=3600,
        cwd=tempfile.gettempdir(),
    )
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
        return [{"error": f"engine {engine} crashed: {err}", "predictions": []} for _ in jobs]
    results: list[dict[str, Any]] = pickle.loads(proc.stdout)
    return results


def _columns(runs: RunTable) -> dict[str, np.ndarray]:
    return {k: getattr(runs, k) for k in RunTable.__dataclass_fields__}


def engine_outcomes(engine: str, splits: Sequence[Split], bootstrap: int, in_sample: bool = False) -> list[Outcome]:
    jobs = []
    for sp in splits:
        opts = sp.in_sample_options if in_sample and sp.in_sample_options is not None else sp.options
        jobs.append(
            {
                "runs": _columns(sp.train),
                "options": {"bootstrap": bootstrap, "loss_law": False, **opts},
                "targets": [t.scale for t in sp.targets],
                "batch_size": None,
            }
        )
    # Targets that condition on a batch are predicted in a job of their own (per split, same fit cost).
    results = run_engine(engine, jobs)
    cond_jobs, where = [], []
    for k, sp in enumerate(splits):
        for j, t in enumerate(sp.targets):
            if t.batch_size is not None:
                cond_jobs.append({**jobs[k], "targets": [t.scale], "batch_size": t.batch_size})
                where.append((k, j))
    cond = run_engine(engine, cond_jobs) if cond_jobs else []
    for (k, j), res in zip(where, cond):
        if res["error"] is None and results[k]["error"] is None:
            results[k]["predictions"][j] = res["predictions"][0]
    out = []
    for sp, res in zip(splits, results):
        if res["error"] is not None:
            out.append(Outcome([None] * len(sp.targets), [{} for _ in sp.targets], res["error"]))
            continue
        settings, intervals = [], []
        for p in res["predictions"]:
            if "error" in p or p.get("learning_rate") is None:
                settings.append(None)
                intervals.append({})
            else:
                settings.append({a: (None if p.get(a) is None else p[a][0]) for a in AXES})
                intervals.append({a: p.get(a) for a in AXES})
        out.append(Outcome(settings, intervals))
    return out


def baseline_outcomes(fn: Baseline, splits: Sequence[Split]) -> list[Outcome]:
    out = []
    for sp in splits:
        try:
            s = fn(sp.train, sp.targets)
            out.append(Outcome(list(s), [{} for _ in sp.targets]))
        except Exception as e:  # noqa: BLE001 - a baseline that cannot answer counts as failed
            out.append(Outcome([None] * len(sp.targets), [{} for _ in sp.targets], f"{type(e).__name__}: {e}"))
    return out


# --- scoring and printing ------------------------------------------------------------------
@dataclass
class Score:
    regrets: list[float]
    failed: int
    n: int
    hits: dict[str, list[bool]]
    widths: dict[str, list[float]] = field(default_factory=dict)  # log(high / low) of the 90% intervals

    @property
    def mean(self) -> float:
        return float(np.mean(self.regrets)) if self.regrets else math.nan

    @property
    def se(self) -> float:
        """Standard error of the mean regret over the targets: the figure's own noise."""
        return float(np.std(self.regrets, ddof=1) / math.sqrt(len(self.regrets))) if len(self.regrets) > 1 else math.nan


def score(splits: Sequence[Split], outcomes: Sequence[Outcome]) -> Score:
    regrets, failed, n = [], 0, 0
    hits: dict[str, list[bool]] = {a: [] for a in AXES}
    widths: dict[str, list[float]] = {a: [] for a in AXES}
    for sp, oc in zip(splits, outcomes):
        for t, s, iv in zip(sp.targets, oc.settings, oc.intervals):
            n += 1
            if s is None:
                failed += 1
                for a in t.truth:
                    hits[a].append(False)
                continue
            regrets.append(t.score(s))
            for a, true in t.truth.items():
                i = iv.get(a)
                lo, hi = true if isinstance(true, tuple) else (true, true)
                hits[a].append(i is not None and i[1] <= hi and lo <= i[2])
                if i is not None and i[1] > 0:
                    widths[a].append(math.log(i[2] / i[1]))
    return Score(regrets, failed, n, hits, widths)


def print_table(title: str, rows: list[tuple[str, Score]], coverage: bool = True) -> None:
    print(f"\n{title}")
    head = f"  {'method':<50} {'mean':>8} {'± se':>7} {'median':>8} {'max':>8} {'n':>4} {'failed':>6}"
    if coverage:
        head += "  90% interval holds the optimum (median width ×) for lr / bs / wd"
    print(head)
    for name, sc in rows:
        r = np.array(sc.regrets) if sc.regrets else np.array([np.nan])
        line = (
            f"  {name:<50} {_pct(sc.mean):>8} {_pct(sc.se, 3):>7} {_pct(float(np.median(r))):>8} "
            f"{_pct(float(np.max(r))):>8} {sc.n:>4} {sc.failed:>6}"
        )
        if coverage and any(sc.hits[a] for a in AXES):
            line += "  " + " / ".join(
                f"{np.mean(sc.hits[a]):.0%} of {len(sc.hits[a])} ({math.exp(float(np.median(sc.widths[a]))):.2g}×)"
                if sc.widths.get(a)
                else (f"{np.mean(sc.hits[a]):.0%} of {len(sc.hits[a])}" if sc.hits[a] else "-")
                for a in AXES
            )
        print(line)


def compare(
    title: str,
    splits: Sequence[Split],
    engines: Sequence[str],
    baselines: Sequence[tuple[str, Baseline]],
    bootstrap: int,
    in_sample_label: str | None = None,
) -> dict[str, Score]:
    rows: list[tuple[str, Score]] = []
    for e in engines:
        label = "hpscale (this checkout)" if e == "current" else f"hpscale engine at {e}"
        if e == "current" and in_sample_label:
            label += " — leave-source-out"
        rows.append((label, score(splits, engine_outcomes(e, splits, bootstrap))))
        if e == "current" and in_sample_label and any(sp.in_sample_options is not None for sp in splits):
            rows.append((f"  same, {in_sample_label}", score(splits, engine_outcomes(e, splits, bootstrap, True))))
    for name, fn in baselines:
        rows.append((name, score(splits, baseline_outcomes(fn, splits))))
    print_table(title, rows)
    out = dict(rows)
    mine = next((sc for name, sc in rows if name.startswith("hpscale (this checkout)")), None)
    if mine is not None:
        parts = [f"{_pct(mine.mean)} ± {_pct(mine.se)}"]
        parts += [
            f"{n.removeprefix('hpscale engine at ')} {_pct(sc.mean)}"
            for n, sc in rows
            if n.startswith("hpscale engine")
        ]
        best = min(
            ((n, sc) for n, sc in rows if not n.lstrip().startswith(("hpscale", "same"))), key=lambda r: r[1].mean
        )
        parts.append(f"best baseline {_pct(best[1].mean)} ({best[0].split(',')[0]})")
        cov = [f"{a[:2]} {np.mean(mine.hits[a]):.0%}" for a in AXES if mine.hits[a]]
        SUMMARY.append(
            (title.split(":")[0][:60], " | ".join(parts) + (f" | 90% holds: {' '.join(cov)}" if cov else ""))
        )
    return out


# --- a. real files ---------------------------------------------------------------------------
STEPLAW_LSO = {"exclude_prior_sources": ("steplaw",)}


def _steplaw_target(runs: RunTable, sidx: np.ndarray, s: int, sc: Scale) -> Target:
    m = (sidx == s) & runs.completed
    surf = RegretSurface.from_runs(runs.learning_rate[m], runs.batch_size[m], runs.final_loss[m])
    # The measured optimum: the range of the runs within 0.25% of the setting's best loss (Step Law's band).
    near = m & (runs.final_loss <= 1.0025 * runs.final_loss[m].min())
    truth = {
        a: (float(getattr(runs, a)[near].min()), float(getattr(runs, a)[near].max()))
        for a in ("learning_rate", "batch_size")
    }
    scale = {k: float(getattr(sc, k)) for k in SCALE_KEYS}
    return Target(scale, lambda st, surf=surf: surf.regret(float(st["learning_rate"]), float(st["batch_size"])), truth)


def steplaw_splits(runs: RunTable) -> list[tuple[str, list[Split]]]:
    scales, sidx = group_scales(runs)
    ns = sorted({sc.n_params for sc in scales})
    budgets = {n: sorted(sc.tokens for sc in scales if sc.n_params == n) for n in ns}
    small_d = np.array([runs.tokens[i] in budgets[runs.n_params[i]][:2] for i in range(len(runs))])

    def split(name: str, train: np.ndarray, test: Callable[[Scale], bool]) -> Split:
        targets = [_steplaw_target(runs, sidx, s, sc) for s, sc in enumerate(scales) if test(sc)]
        return Split("steplaw", name, runs.subset(train), targets, dict(STEPLAW_LSO), {})

    out = [
        (
            "(i) two smallest sizes → 429M, 537M",
            [split("i", np.isin(runs.n_params, ns[:2]), lambda sc: sc.n_params in ns[2:4])],
        ),
        ("(ii) N < 5e8 → 537M", [split("ii", runs.n_params < 5e8, lambda sc: sc.n_params >= 5e8)]),
        (
            "(iii) tokens forward: each size's two smallest budgets → its larger ones",
            [split("iii", small_d, lambda sc: sc.tokens not in budgets[sc.n_params][:2])],
        ),
        (
            "(iv) both: N < 5e8 and each size's two smallest budgets → 537M beyond the training budgets",
            [
                split(
                    "iv",
                    small_d & (runs.n_params < 5e8),
                    lambda sc: sc.n_params >= 5e8 and sc.tokens > runs.tokens[small_d & (runs.n_params < 5e8)].max(),
                )
            ],
        ),
        (
            "(v) leave one size out",
            [split(f"v{n:.3g}", runs.n_params != n, lambda sc, n=n: sc.n_params == n) for n in ns],
        ),
    ]
    return out


def part_a(engines: Sequence[str], bootstrap: int) -> None:
    runs = load_steplaw()
    print(
        f"\n== a. Step Law shared file ({len(runs)} runs), leave-source-out: every prior citing Step Law off; "
        "regret = relative excess loss at the predicted (lr, bs) on the held-out setting's own sweep =="
    )
    baselines = [
        ("reuse the largest proxy's best run", reuse_largest),
        ("refit of per-scale best runs (log N, log D)", refit_optima),
        ("Step Law procedure, refitted on the training runs", steplaw_refit),
        ("published Step Law formula (in-sample: fitted on this file)", steplaw_formula),
    ]
    for title, splits in steplaw_splits(runs):
        compare(title, splits, engines, baselines, bootstrap, "in-sample (published priors incl. Step Law)")
    part_a_marin(engines, bootstrap)


def _marin_line(runs: RunTable, m: np.ndarray, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """(log value, loss) of the runs at one setting that lie on `axis`'s ablation line (others at the modal value)."""
    others = [a for a in AXES if a != axis]
    keep = m & runs.completed
    for a in others:
        v = getattr(runs, a)[keep]
        if v.size == 0:
            break
        vals, counts = np.unique(np.round(v, 12), return_counts=True)
        keep = keep & (np.round(getattr(runs, a), 12) == vals[np.argmax(counts)])
    x = np.log(getattr(runs, axis)[keep])
    return x, runs.final_loss[keep]


def _line_regret(x: np.ndarray, loss: np.ndarray, value: float | None) -> float:
    if value is None or not value > 0:
        return math.nan
    order = np.argsort(x)
    xs, ys = x[order], loss[order]
    v = float(np.clip(math.log(value), xs[0], xs[-1]))
    return float(np.interp(v, xs, ys) / ys.min() - 1.0)


def marin_splits(optimizer: str) -> list[Split]:
    runs = load_marin(optimizer)
    scales, sidx = group_scales(runs)
    sizes = sorted({sc.n_params for sc in scales})
    mult = runs.tokens / runs.n_params
    mults = sorted(set(np.round(mult, 3)))

    def targets(test: Callable[[int, Scale], bool]) -> list[Target]:
        out = []
        for s, sc in enumerate(scales):
            if not test(s, sc):
                continue
            x, loss = _marin_line(runs, sidx == s, "learning_rate")
            if np.unique(np.round(x, 6)).size < 3:
                continue
            i_best = int(np.argmin(loss))
            m = (sidx == s) & runs.completed
            bs = float(np.median(runs.batch_size[m]))
            out.append(
                Target(
                    {k: float(getattr(sc, k)) for k in SCALE_KEYS},
                    lambda st, x=x, loss=loss: _line_regret(x, loss, st.get("learning_rate")),
                    {"learning_rate": float(math.exp(x[i_best]))},
                    batch_size=bs,
                )
            )
        return out

    opts = {"optimizer": optimizer, "parameterization": "sp"}
    by_n = Split("marin", f"{optimizer} N", runs.subset(np.isin(runs.n_params, sizes[:2])), [], opts)
    by_n.targets = targets(lambda s, sc: sc.n_params > sizes[1])
    small = np.isin(np.round(mult, 3), mults[:2])
    by_d = Split("marin", f"{optimizer} D", runs.subset(small), [], opts)
    by_d.targets = targets(lambda s, sc: round(sc.tokens / sc.n_params, 3) > mults[1])
    return [sp for sp in (by_n, by_d) if sp.targets]


def part_a_marin(engines: Sequence[str], bootstrap: int) -> None:
    if not (data_dir() / MARIN_FILE).exists():
        print("\n  (Marin file not found: skipped)")
        return
    print(
        "\n== a'. Marin ablations (11 optimizers; no prior comes from this file): regret along the held-out "
        "setting's learning-rate line, engines conditioned on its batch =="
    )
    all_splits = [sp for o in MARIN_OPTIMIZERS for sp in marin_splits(o)]
    baselines = [("reuse the largest proxy's best run", reuse_largest), ("refit of per-scale best runs", refit_optima)]
    for label, want in (("forward in size (130M, 300M → larger)", " N"), ("forward in tokens (1×, 2× → more)", " D")):
        splits = [sp for sp in all_splits if sp.name.endswith(want)]
        compare(f"{label}: {len(splits)} optimizers", splits, engines, baselines, bootstrap)


# --- b. synthetic ---------------------------------------------------------------------------
def synthetic_splits(kind: str, seeds: Sequence[int], factors: Sequence[float]) -> list[Split]:
    out = []
    for seed in seeds:
        runs, truth = random_study(seed, kind=kind)
        targets = []
        for t in truth.targets(factors):
            scale = {k: t[k] for k in SCALE_KEYS}
            opt = truth.optimum(**scale)
            targets.append(
                Target(
                    scale,
                    lambda st, truth=truth, scale=scale: truth.regret(scale, st),
                    {a: opt[a] for a in truth.swept},
                )
            )
        out.append(Split(kind, f"{kind}-{seed}", runs, targets, truth.study_options()))
    return out


def part_b(engines: Sequence[str], seeds: Sequence[int], bootstrap: int, label: str) -> None:
    print(
        f"\n== b. synthetic studies, true exponents drawn independently of the prior centres; seeds {label}; "
        "targets 4× and 16× beyond the proxies; regret exact on the true surface =="
    )
    baselines = [("reuse the largest proxy's best run", reuse_largest), ("refit of per-scale best runs", refit_optima)]
    for kind in KINDS:
        for factor in (4.0, 16.0):
            splits = synthetic_splits(kind, seeds, (factor,))
            compare(f"{kind} {factor:g}×, seeds {label}: {len(splits)} studies", splits, engines, baselines, bootstrap)


# --- d. robustness and time ---------------------------------------------------------------------
def concat(a: RunTable, b: RunTable) -> RunTable:
    return RunTable(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in RunTable.__dataclass_fields__})


def part_d(bootstrap: int, repeat: int) -> None:
    runs = load_steplaw()
    print("\n== d. robustness and cost ==")
    n_min = float(runs.n_params.min())
    m = (runs.n_params == n_min) & (runs.tokens == runs.tokens[runs.n_params == n_min].min())
    i = int(np.flatnonzero(m)[len(np.flatnonzero(m)) // 2])
    rec = {k: getattr(runs, k)[i] for k in ("n_params", "tokens", "width", "depth", "seq_len", "learning_rate")}
    bad = RunTable.from_records([{**rec, "batch_size": runs.batch_size[i], "final_loss": 0.5}])
    f0 = fit_study(runs, bootstrap=bootstrap)
    f1 = fit_study(concat(runs, bad), bootstrap=bootstrap)
    p0, p1 = predict(f0, TARGET_7B), predict(f1, TARGET_7B)
    moves = {a: getattr(p1, a).value / getattr(p0, a).value - 1 for a in ("learning_rate", "batch_size")}
    named = any("implausible" in w for w in p1.warnings)
    print(
        f"  one absurd run (loss 0.5 at N={n_min:.3g}): 7B lr {moves['learning_rate']:+.2%}, batch "
        f"{moves['batch_size']:+.2%}; named in the recommendation's warnings: {'yes' if named else 'no'}"
    )
    SUMMARY.append(
        ("one absurd run: 7B lr / batch change", f"{moves['learning_rate']:+.2%} / {moves['batch_size']:+.2%}")
    )
    hws = []
    for seed in range(5):
        r3, truth = lr_only_study(seed)
        truth.proxy_scales()[0]
        fit = fit_study(r3, bootstrap=bootstrap, seed=seed, loss_law=False)
        o = fit.optima[0].optimum["learning_rate"].value
        hws.append((o.high - o.low) / (2 * o.value))
    print(f"  three runs at one scale: lr interval half-width min ±{min(hws):.1%} (want > ±5%)")
    full = best_of(lambda: fit_study(runs, bootstrap=1000), repeat)
    base = best_of(lambda: steplaw_procedure(runs), 10)
    print(
        f"  fit_study(bootstrap=1000) of the Step Law study, one core: {full:.3f} s (Step Law procedure {base * 1e3:.1f} ms)"
    )
    SUMMARY.append(("Step Law fit time, one core", f"{full:.2f} s (target < {FIT_TIME_TARGET:g} s)"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="10 synthetic seeds per kind, current engine only")
    ap.add_argument("--seeds", type=int, default=None, help="synthetic seeds per kind (default 20, quick 10)")
    ap.add_argument("--held-out", action="store_true", help="also seeds 2000…: never looked at while developing")
    ap.add_argument(
        "--engines", default=None, help="comma-separated: current and git revisions (default current,1382cba,b0b223e)"
    )
    ap.add_argument("--parts", default="abd", help="which parts to run (default abd)")
    ap.add_argument("--bootstrap", type=int, default=100, help="bootstrap resamples per fit (default 100)")
    args = ap.parse_args()
    engines = (args.engines or ("current" if args.quick else "current,1382cba,b0b223e")).split(",")
    n = args.seeds or (10 if args.quick else 20)
    t0 = time.perf_counter()
    rev = subprocess.run(
        ["git", "-C", str(_ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout
    print(f"bench/accuracy.py: engines {', '.join(engines)}; checkout {rev.strip()}; bootstrap {args.bootstrap}")
    if "a" in args.parts:
        part_a(engines, args.bootstrap)
    if "b" in args.parts:
        part_b(engines, range(n), args.bootstrap, f"0…{n - 1} (development)")
        if args.held_out:
            part_b(engines, range(HELD_OUT, HELD_OUT + n), args.bootstrap, f"{HELD_OUT}…{HELD_OUT + n - 1} (held out)")
    if "d" in args.parts:
        part_d(args.bootstrap, 1 if args.quick else 3)
    print("\n== summary ==")
    for what, val in SUMMARY:
        print(f"  {what:<60} {val}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
