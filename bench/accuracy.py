"""Accuracy and calibration of the fitting engine, with baselines from the same run (issue 10).

Run: python bench/accuracy.py [--quick] [--seeds N] [--bootstrap B]

a. Step Law shared file, forward splits and leave-one-model-size-out: mean regret (loss at
   the predicted (lr, bs) read on the held-out setting's own sweep, `fitting.backtest`) of
   hpscale, the Step Law procedure refitted on the same runs, the published formula, and the
   published exponents with only the constants refitted.
b. Synthetic studies with random true laws (`fitting.synthetic`): 90%-interval coverage of
   the true optimum at targets 4× and 16× beyond the largest proxy, interval widths, errors,
   exponent errors; and three runs at one scale (how wide is the lr optimum's interval?).
c. One absurd run (loss 0.5 at the smallest Step Law model): how far it moves the 7B
   recommendation, and whether a warning names it.
d. Fit time of the Step Law study on one core.

Any fit or prediction that raises is counted as a failure and the bench goes on. To measure
another checkout, put it first on PYTHONPATH (`PYTHONPATH=/path/to/checkout python bench/accuracy.py`):
with PYTHONPATH set this file does not prepend its own repository; the header prints which
`fitting` package was used.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import math
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[1]
if os.environ.get("PYTHONPATH"):
    sys.path.append(str(_ROOT))  # an explicit PYTHONPATH (another checkout) wins
else:
    sys.path.insert(0, str(_ROOT))

import numpy as np

import fitting
from bench.timing import best_of
from fitting.backtest import (
    RegretSurface,
    leave_one_size_out,
    near_optimal_runs,
    steplaw_procedure,
    steplaw_published,
)
from fitting.datasets import STEPLAW_SEQ_LEN, load_steplaw
from fitting.optima import Scale, group_scales
from fitting.published import STEP_LAW_BATCH_TOKENS_EXPONENTS, STEP_LAW_LR_EXPONENTS
from fitting.runs import RunTable
from fitting.study_fit import fit_study, predict
from fitting.synthetic import AXES, lr_only_study, random_study

# Issue 10 "done when" targets (mean regret, fraction) and the coverage band.
TARGET_FWD2 = 0.0018
TARGET_FWD3 = 0.0008
TARGET_LOMO = 0.0008
TARGET_LOMO30 = 0.0012
COVERAGE_BAND = (0.80, 0.97)
EXPONENT_TOL = 0.05
# An exponent is "identified by the data" when its 90% interval is within ±EXPONENT_TOL; a
# calibrated posterior then puts the truth within ±EXPONENT_TOL about 90% of the time, so
# the check asks for at least EXPONENT_IDENTIFIED_SHARE of the identified ones.
EXPONENT_IDENTIFIED_SHARE = 0.85
OUTLIER_TARGET = 0.02
FIT_TIME_TARGET = 2.0
HALF_WIDTH_MIN = 0.05
TARGET_7B = {"n_params": 7e9, "tokens": 1.4e12}
TARGET_7B_SHAPE = {"width": 4096.0, "depth": 32.0}  # only passed if the fitted laws need them

SUMMARY: list[tuple[str, str, str]] = []
ERRORS: list[str] = []


def _err(where: str, e: BaseException) -> None:
    ERRORS.append(f"{where}: {type(e).__name__}: {str(e)[:200]}")


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def _pct(x: float, nd: int = 3) -> str:
    return "  n/a" if x is None or not math.isfinite(x) else f"{100 * x:.{nd}f}%"


# --- methods: RunTable → (Scale → (lr, bs)) -------------------------------------------------
Predictor = Callable[[Scale], tuple[float, float]]


def hpscale(bootstrap: int) -> Callable[[RunTable], Predictor]:
    def method(train: RunTable) -> Predictor:
        fit = fit_study(train, bootstrap=bootstrap, loss_law=False)

        def pred(s: Scale) -> tuple[float, float]:
            p = predict(fit, s.variables())
            if p.batch_size is None:
                raise ValueError("no batch-size recommendation")
            return p.learning_rate.value, p.batch_size.value

        return pred

    return method


def published_exponents_refit(train: RunTable, best_run_only: bool = False) -> Predictor:
    """Step Law's published exponents; log constants = mean residual over near-optimal (0.25%) runs.

    With `best_run_only`, over each setting's single best run instead (the variant behind
    the issue's 0.22% figure).
    """
    scales, sidx, near = near_optimal_runs(train)
    ok = train.completed
    if best_run_only:
        near = np.zeros(len(train), dtype=bool)
        for s in range(len(scales)):
            m = np.flatnonzero((sidx == s) & ok)
            if m.size:
                near[m[np.argmin(train.final_loss[m])]] = True
    a_n, a_d = STEP_LAW_LR_EXPONENTS["n_params"], STEP_LAW_LR_EXPONENTS["tokens"]
    b_d = STEP_LAW_BATCH_TOKENS_EXPONENTS["tokens"]
    ln, ld = np.log(train.n_params[near]), np.log(train.tokens[near])
    c_lr = float(np.mean(np.log(train.learning_rate[near]) - a_n * ln - a_d * ld))
    c_bs = float(np.mean(np.log(train.batch_size[near]) - b_d * ld))
    return lambda s: (
        math.exp(c_lr + a_n * math.log(s.n_params) + a_d * math.log(s.tokens)),
        math.exp(c_bs + b_d * math.log(s.tokens)),
    )


def guarded(method: Callable[[RunTable], Predictor], failed: set, name: str) -> Callable[[RunTable], Predictor]:
    """A method whose fit/predict failures are recorded (setting keys in `failed`) instead of raised."""

    def m(train: RunTable) -> Predictor:
        try:
            inner = method(train)
        except Exception as e:  # noqa: BLE001 - the bench counts any failure
            _err(f"{name} fit", e)
            inner = None

        def pred(s: Scale) -> tuple[float, float]:
            if inner is not None:
                try:
                    lr, bs = inner(s)
                    if math.isfinite(lr) and math.isfinite(bs) and lr > 0 and bs > 0:
                        return lr, bs
                    raise ValueError(f"non-finite recommendation lr={lr} bs={bs}")
                except Exception as e:  # noqa: BLE001
                    _err(f"{name} predict", e)
            failed.add((s.n_params, s.tokens))
            return 1e-3, 256.0  # placeholder, its regret is discarded

        return pred

    return m


def surfaces(runs: RunTable) -> tuple[tuple[Scale, ...], dict[int, RegretSurface]]:
    scales, sidx = group_scales(runs)
    out = {}
    for s in range(len(scales)):
        m = (sidx == s) & runs.completed
        out[s] = RegretSurface.from_runs(runs.learning_rate[m], runs.batch_size[m], runs.final_loss[m])
    return scales, out


def forward_split(runs: RunTable, train_mask: np.ndarray, test_n: set[float], method, name: str):
    """Regret per held-out setting (n_params in `test_n`) when fitted on `runs[train_mask]`."""
    failed: set = set()
    scales, surf = surfaces(runs)
    pred = guarded(method, failed, name)(runs.subset(train_mask))
    out = {}
    for s, sc in enumerate(scales):
        if sc.n_params in test_n:
            lr, bs = pred(sc)
            out[(sc.n_params, sc.tokens)] = surf[s].regret(lr, bs)
    return {k: v for k, v in out.items() if k not in failed}, len(failed & set(out)), len(out)


def lomo(runs: RunTable, method, name: str, train_fraction: float = 1.0, seed: int = 0):
    failed: set = set()
    r = leave_one_size_out(runs, guarded(method, failed, name), train_fraction=train_fraction, seed=seed)
    return {k: v for k, v in r.items() if k not in failed}, len(failed & set(r)), len(r)


def regret_table(title: str, rows: list[tuple[str, dict, int, int]], target: float) -> None:
    print(f"\n{title}")
    print(f"  {'method':<44} {'mean':>9} {'median':>9} {'max':>9} {'settings':>9} {'failed':>7}")
    for name, reg, nf, n in rows:
        v = np.array(list(reg.values())) if reg else np.array([np.nan])
        mean = float(np.mean(v)) if reg else float("nan")
        print(f"  {name:<44} {_pct(mean):>9} {_pct(float(np.median(v))):>9} {_pct(float(np.max(v))):>9} {n:>9} {nf:>7}")
    name, reg, nf, n = rows[0]
    mean = float(np.mean(list(reg.values()))) if reg else float("nan")
    ok = bool(reg) and nf == 0 and mean <= target
    print(f"  target (hpscale) ≤ {_pct(target, 2)}: {_verdict(ok)}")
    SUMMARY.append((title.split(":")[0], f"{_pct(mean)} (target ≤ {_pct(target, 2)}, failed {nf}/{n})", _verdict(ok)))


def part_a(runs: RunTable, boot: int, lomo_seeds: int) -> None:
    print("\n== a. Step Law shared file: regret of (lr, bs) at held-out settings (mean relative excess loss) ==")
    methods = [
        ("hpscale (fit_study + predict)", hpscale(boot)),
        ("Step Law procedure, refitted on training runs", steplaw_procedure),
        ("published exponents, constants refitted", published_exponents_refit),
        ("  same, constants from settings' best runs", lambda t: published_exponents_refit(t, best_run_only=True)),
        ("published Step Law formula (optimistic ref.)", steplaw_published(STEPLAW_SEQ_LEN)),
    ]
    shapes = sorted({(n, w, d) for n, w, d in zip(runs.n_params, runs.width, runs.depth)})
    ns = sorted({s[0] for s in shapes})
    print(f"  model sizes N: {', '.join(f'{n:.3g}' for n in ns)}; {len(runs)} runs")
    # (i) two smallest shapes → the next two
    train = np.isin(runs.n_params, ns[:2])
    test = set(ns[2:4])
    rows = [(name, *forward_split(runs, train, test, m, name)) for name, m in methods]
    regret_table(
        f"(i) forward: fit N ∈ {{{', '.join(f'{n:.3g}' for n in ns[:2])}}}, predict "
        f"N ∈ {{{', '.join(f'{n:.3g}' for n in sorted(test))}}}",
        rows,
        TARGET_FWD2,
    )
    # (ii) N < 5e8 → 537M
    train = runs.n_params < 5e8
    test = {n for n in ns if n >= 5e8}
    rows = [(name, *forward_split(runs, train, test, m, name)) for name, m in methods]
    regret_table(
        f"(ii) forward: fit N < 5e8, predict N ∈ {{{', '.join(f'{n:.3g}' for n in sorted(test))}}}", rows, TARGET_FWD3
    )
    # (iii) LOMO, full and 30%
    rows = [(name, *lomo(runs, m, name)) for name, m in methods]
    regret_table("(iii) leave-one-model-size-out, all runs", rows, TARGET_LOMO)
    rows = []
    for name, m in methods:
        merged: dict = {}
        nf = n = 0
        for seed in range(lomo_seeds):
            r, f, k = lomo(runs, m, name, train_fraction=0.3, seed=seed)
            merged.update({(*key, seed): v for key, v in r.items()})
            nf, n = nf + f, n + k
        rows.append((name, merged, nf, n))
    regret_table(
        f"(iv) leave-one-model-size-out, 30% of runs (train_fraction=0.3, seeds 0..{lomo_seeds - 1}, settings × seeds)",
        rows,
        TARGET_LOMO30,
    )


# --- b. synthetic calibration ---------------------------------------------------------------
def _interval(p, axis: str):
    i = getattr(p, axis, None)
    return None if i is None else (float(i.value), float(i.low), float(i.high))


def synthetic_seed(seed: int, boot: int) -> dict:
    runs, truth = random_study(seed)
    rec = {
        "seed": seed,
        "n_runs": len(runs),
        "n_outliers": len(truth.outliers),
        "targets": [],
        "exponents": [],
        "fit_failed": False,
        "same_set": {},
    }
    try:
        fit = fit_study(runs, bootstrap=boot, seed=seed, loss_law=False)
    except Exception as e:  # noqa: BLE001
        _err(f"synthetic seed {seed} fit", e)
        rec["fit_failed"] = True
        for t in truth.targets():
            rec["targets"].append(
                {
                    "factor": t["factor"],
                    **{a: None for a in AXES},
                    "truth": truth.optimum(t["n_params"], t["tokens"], t["width"], t["depth"]),
                }
            )
        return rec
    for axis in AXES:
        law = fit.laws.get(axis)
        tv = set(truth.variables(axis))
        # A law may average several variable sets; compare where its union is the true set.
        same = law is not None and set(law.variables) == tv
        rec["same_set"][axis] = None if law is None else same
        if same:
            for v in law.variables:
                iv = law.exponent(v)
                identified = (iv.high - iv.low) / 2 <= EXPONENT_TOL
                rec["exponents"].append(
                    (
                        axis,
                        v,
                        iv.value - truth.exponent(axis, v),
                        identified,
                        iv.low <= truth.exponent(axis, v) <= iv.high,
                    )
                )
    for t in truth.targets():
        tgt = {k: t[k] for k in ("n_params", "tokens", "width", "depth")}
        row = {"factor": t["factor"], "truth": truth.optimum(**tgt)}
        try:
            p = predict(fit, tgt)
            for a in AXES:
                row[a] = _interval(p, a)
        except Exception as e:  # noqa: BLE001
            _err(f"synthetic seed {seed} predict {t['factor']:g}x", e)
            for a in AXES:
                row[a] = None
        rec["targets"].append(row)
    return rec


def part_b(n_seeds: int, boot: int, n_three: int) -> None:
    print(f"\n== b. synthetic studies with random true laws (fitting.synthetic, seeds 0..{n_seeds - 1}) ==")
    t0 = time.perf_counter()
    recs = [synthetic_seed(s, boot) for s in range(n_seeds)]
    n_fail = sum(r["fit_failed"] for r in recs)
    print(
        f"  {n_seeds} studies, {sum(r['n_runs'] for r in recs)} runs, "
        f"{sum(r['n_outliers'] > 0 for r in recs)} with outliers; fits failed: {n_fail}; "
        f"{time.perf_counter() - t0:.1f} s"
    )
    print(
        "\n  90%-interval coverage of the true optimum at targets beyond the largest proxy "
        f"(band {COVERAGE_BAND[0]:.0%}–{COVERAGE_BAND[1]:.0%}; a missing prediction counts as a miss)"
    )
    print(
        f"  {'hyperparameter':<15} {'target':>6} {'n':>4} {'missing':>8} {'coverage':>9} {'cov|avail':>10} "
        f"{'med width(log)':>15} {'mean|logerr|':>13} {'med|logerr|':>12}"
    )
    for axis in AXES:
        for factor in (4.0, 16.0, None):
            rows = [t for r in recs for t in r["targets"] if factor is None or t["factor"] == factor]
            have = [t for t in rows if t[axis] is not None and t[axis][0] > 0 and t[axis][1] > 0]
            cov = [t[axis][1] <= t["truth"][axis] <= t[axis][2] for t in have]
            width = [math.log(t[axis][2] / t[axis][1]) for t in have]
            lerr = [abs(math.log(t[axis][0] / t["truth"][axis])) for t in have]
            # zero or negative values (e.g. wd → 0) count as missing for the log metrics, but as misses for coverage
            n, miss = len(rows), len(rows) - len(have)
            c_all = sum(cov) / n if n else float("nan")
            c_av = sum(cov) / len(have) if have else float("nan")
            lab = "all" if factor is None else f"{factor:g}×"
            print(
                f"  {axis:<15} {lab:>6} {n:>4} {miss:>8} {c_all:>9.0%} {c_av:>10.0%} "
                f"{(np.median(width) if width else float('nan')):>15.3f} "
                f"{(np.mean(lerr) if lerr else float('nan')):>13.3f} {(np.median(lerr) if lerr else float('nan')):>12.3f}"
            )
            if factor is None:
                ok = n > 0 and COVERAGE_BAND[0] <= c_all <= COVERAGE_BAND[1]
                SUMMARY.append((f"(b) coverage {axis} (4× and 16×)", f"{c_all:.0%} of {n} (band 80–97%)", _verdict(ok)))
    print(
        "\n  exponent errors (fitted − true) where the fitted law uses the true law's variables; "
        f"identified = 90% interval within ±{EXPONENT_TOL}"
    )
    print(
        f"  {'hyperparameter':<15} {'variable':<10} {'fits with same vars':>20} {'mean|err|':>10} {'max|err|':>9} "
        f"{'within ±0.05':>13} {'covered':>8} {'identified':>11} {'ident. ±0.05':>13}"
    )
    for axis in AXES:
        same = [r["same_set"].get(axis) for r in recs if not r["fit_failed"]]
        n_same = sum(bool(s) for s in same)
        by_var: dict[str, list[tuple[float, bool, bool]]] = {}
        for r in recs:
            for a, v, e, ident, cov in r["exponents"]:
                if a == axis:
                    by_var.setdefault(v, []).append((e, ident, cov))
        if not by_var:
            print(f"  {axis:<15} {'-':<10} {f'{n_same}/{len(recs)}':>20} {'n/a':>10} {'n/a':>9} {'n/a':>13}")
        for v, rows in sorted(by_var.items()):
            a = np.abs([e for e, _, _ in rows])
            idn = np.array([i for _, i, _ in rows])
            ai = a[idn]
            print(
                f"  {axis:<15} {v:<10} {f'{n_same}/{len(recs)}':>20} {a.mean():>10.3f} {a.max():>9.3f} "
                f"{np.mean(a <= EXPONENT_TOL):>13.0%} {np.mean([c for _, _, c in rows]):>8.0%} "
                f"{f'{idn.sum()}/{idn.size}':>11} {(np.mean(ai <= EXPONENT_TOL) if ai.size else float('nan')):>13.0%}"
            )
    rows = [(abs(e), i) for r in recs for _, _, e, i, _ in r["exponents"]]
    ident = np.array([e for e, i in rows if i])
    if ident.size:
        share = float(np.mean(ident <= EXPONENT_TOL))
        SUMMARY.append(
            (
                "(b) exponent errors where identified",
                (
                    f"{share:.0%} of {ident.size} within ±{EXPONENT_TOL} (max {ident.max():.3f}); "
                    f"all comparable: {np.mean(np.array([e for e, _ in rows]) <= EXPONENT_TOL):.0%} of {len(rows)}"
                ),
                _verdict(share >= EXPONENT_IDENTIFIED_SHARE),
            )
        )
    else:
        SUMMARY.append(("(b) exponent errors (same-variable laws)", "no comparable law", "n/a"))

    print("\n  three runs at one scale (lr varied ×2 around a guess; bs, wd at their optimum; noise 0.2%)")
    print(
        f"  {'seed':>4} {'source':<22} {'lr value':>10} {'low':>10} {'high':>10} {'true lr*':>10} "
        f"{'half-width':>11} {'covers':>7}  noise warning"
    )
    hws = []
    for seed in range(n_three):
        runs, truth = lr_only_study(seed)
        sc = truth.proxy_scales()[0]
        true_lr = truth.optimum(**sc)["learning_rate"]
        src, iv, warn = "failed", None, []
        try:
            fit = fit_study(runs, bootstrap=boot, seed=seed, loss_law=False)
            warn = list(fit.warnings)
            try:
                p = predict(fit, sc)
                iv, src = _interval(p, "learning_rate"), "predict (law)"
                warn += list(p.warnings)
            except Exception as e:  # noqa: BLE001
                o = fit.optima[0].optimum.get("learning_rate") if fit.optima else None
                if o is not None:
                    iv, src = (o.value.value, o.value.low, o.value.high), f"scale optimum ({type(e).__name__})"
        except Exception as e:  # noqa: BLE001
            _err(f"three-run seed {seed}", e)
        if iv is None:
            print(f"  {seed:>4} {src:<22} {'-':>10}")
            hws.append(float("nan"))
            continue
        hw = (iv[2] - iv[1]) / (2 * iv[0])
        hws.append(hw)
        noise_w = any(("nois" in w.lower() or "assum" in w.lower()) for w in warn)
        print(
            f"  {seed:>4} {src:<22} {iv[0]:>10.3e} {iv[1]:>10.3e} {iv[2]:>10.3e} {true_lr:>10.3e} "
            f"{hw:>10.1%} {iv[1] <= true_lr <= iv[2]!s:>7}  {'yes' if noise_w else 'no'}"
        )
    hw_min = float(np.nanmin(hws)) if np.isfinite(hws).any() else float("nan")
    SUMMARY.append(
        (
            "(b) three runs at one scale: lr interval half-width",
            f"min ±{hw_min:.1%} (want > ±5%)",
            _verdict(math.isfinite(hw_min) and hw_min > HALF_WIDTH_MIN),
        )
    )


# --- c. one absurd run ------------------------------------------------------------------------
def concat(a: RunTable, b: RunTable) -> RunTable:
    return RunTable(**{k: np.concatenate([getattr(a, k), getattr(b, k)]) for k in RunTable.__dataclass_fields__})


def _predict_7b(fit):
    try:
        return predict(fit, TARGET_7B), ""
    except Exception as e:
        if type(e).__name__ == "MissingTarget":
            return predict(fit, {**TARGET_7B, **TARGET_7B_SHAPE}), " (laws need width/depth: 4096 × 32 passed)"
        raise


def part_c(runs: RunTable, boot: int) -> None:
    print("\n== c. one absurd run: loss 0.5 at the smallest Step Law model ==")
    n_min = float(runs.n_params.min())
    at = runs.n_params == n_min
    tokens = float(np.sort(np.unique(runs.tokens[at]))[0])
    m = at & (runs.tokens == tokens)
    lrs, bss = np.unique(runs.learning_rate[m]), np.unique(runs.batch_size[m])
    lr, bs = float(lrs[len(lrs) // 2]), float(bss[len(bss) // 2])
    i = int(np.flatnonzero(m)[0])
    bad = RunTable.from_records(
        [
            {
                "n_params": n_min,
                "tokens": tokens,
                "width": runs.width[i],
                "depth": runs.depth[i],
                "seq_len": runs.seq_len[i],
                "learning_rate": lr,
                "batch_size": bs,
                "final_loss": 0.5,
            }
        ]
    )
    neighbours = runs.final_loss[m & runs.completed]
    print(
        f"  added run #{len(runs)}: N={n_min:.4g}, D={tokens:.4g}, lr={lr:.4g}, bs={bs:g}, final_loss=0.5 "
        f"(setting's losses {neighbours.min():.3f}–{np.median(neighbours):.3f} median)"
    )
    try:
        f0 = fit_study(runs, bootstrap=boot)
        f1 = fit_study(concat(runs, bad), bootstrap=boot)
        p0, note0 = _predict_7b(f0)
        p1, note1 = _predict_7b(f1)
    except Exception as e:  # noqa: BLE001
        _err("outlier check", e)
        print(f"  FAILED: {type(e).__name__}: {e}")
        SUMMARY.append(("(c) one absurd run moves 7B recommendation", "fit failed", "MISS"))
        return
    print(f"  7B target n_params=7e9, tokens=1.4e12{note0 or note1}")
    moves = {}
    for axis in ("learning_rate", "batch_size", "weight_decay"):
        a, b = _interval(p0, axis), _interval(p1, axis)
        if a is None or b is None:
            continue
        moves[axis] = b[0] / a[0] - 1
        print(
            f"  {axis:<14} without {a[0]:.5g} [{a[1]:.4g}, {a[2]:.4g}]   with {b[0]:.5g} [{b[1]:.4g}, {b[2]:.4g}]"
            f"   change {moves[axis]:+.2%}"
        )
    div0 = sum(o.n_diverged for o in f0.optima)
    div1 = sum(o.n_diverged for o in f1.optima)
    print(f"  runs counted as diverged over all scales: {div0} without, {div1} with the absurd run")
    new = [w for w in (*f1.warnings, *p1.warnings) if w not in set(f0.warnings) | set(p0.warnings)]
    keys = ("outlier", "implausible", f"#{len(runs)}", f"run {len(runs)}", "loss 0.5", "0.5 at")
    named = any(any(k in w.lower() for k in keys) for w in new)
    extra = [k for k in ("outliers", "excluded_runs", "flagged_runs") if getattr(f1, k, None)]
    print(f"  new warnings ({len(new)}):" + ("" if new else " none"))
    for w in new[:5]:
        print(f"    - {w[:160]}")
    print(
        f"  a warning names the run: {'yes' if named else 'no'}"
        + (f"; fit attributes listing runs: {', '.join(extra)}" if extra else "")
    )
    worst = max((abs(moves.get(a, float("nan"))) for a in ("learning_rate", "batch_size")), default=float("nan"))
    SUMMARY.append(
        (
            "(c) one absurd run: 7B lr/batch change",
            (
                f"lr {moves.get('learning_rate', float('nan')):+.2%}, "
                f"batch {moves.get('batch_size', float('nan')):+.2%} (target < 2%); "
                f"named in warnings: {'yes' if named else 'no'}"
            ),
            _verdict(bool(worst < OUTLIER_TARGET and named)),
        )
    )


# --- d. fit time ---------------------------------------------------------------------------------
def part_d(runs: RunTable, repeat: int) -> None:
    print("\n== d. fit time of the Step Law study, one core (OMP/OPENBLAS/MKL threads = 1) ==")

    try:
        full = best_of(lambda: fit_study(runs, bootstrap=1000), repeat)
        noll = best_of(lambda: fit_study(runs, bootstrap=1000, loss_law=False), repeat)
    except Exception as e:  # noqa: BLE001
        _err("fit time", e)
        full = noll = float("nan")
    base = best_of(lambda: steplaw_procedure(runs), 10)
    print(f"  fit_study(bootstrap=1000), best of {repeat}:          {full:.3f} s")
    print(f"  … without the loss law:                          {noll:.3f} s")
    print(f"  baseline: Step Law procedure least squares:      {base * 1e3:.2f} ms")
    SUMMARY.append(
        (
            "(d) Step Law fit time, one core",
            f"{full:.2f} s (target < {FIT_TIME_TARGET:g} s)",
            _verdict(math.isfinite(full) and full < FIT_TIME_TARGET),
        )
    )


def _provenance() -> str:
    root = Path(fitting.__file__).resolve().parents[1]
    try:
        rev = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "fitting"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev, dirty = "?", ""
    return f"fitting from {root} (git {rev or '?'}{', fitting/ modified' if dirty else ''})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="8 synthetic seeds, fewer repeats (≈ 1–2 min)")
    ap.add_argument("--seeds", type=int, default=None, help="synthetic studies (default 30, quick 8)")
    ap.add_argument("--bootstrap", type=int, default=200, help="bootstrap resamples per fit (default 200)")
    args = ap.parse_args()
    n_seeds = args.seeds or (8 if args.quick else 30)
    t0 = time.perf_counter()
    print(f"bench/accuracy.py{' --quick' if args.quick else ''}: {_provenance()}")
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, bootstrap {args.bootstrap}, "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    runs = load_steplaw()
    for name, fn in (
        ("a", lambda: part_a(runs, args.bootstrap, 2 if args.quick else 5)),
        ("b", lambda: part_b(n_seeds, args.bootstrap, 3 if args.quick else 5)),
        ("c", lambda: part_c(runs, args.bootstrap)),
        ("d", lambda: part_d(runs, 1 if args.quick else 3)),
    ):
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - one broken part must not hide the others
            _err(f"part {name}", e)
            print(f"  part {name} FAILED: {type(e).__name__}: {e}")
            traceback.print_exc(limit=3)
            SUMMARY.append((f"part {name}", "crashed", "MISS"))
    print("\n== summary ==")
    for what, val, verdict in SUMMARY:
        print(f"  {verdict:<5} {what:<52} {val}")
    if ERRORS:
        print(f"\n{len(ERRORS)} fit/predict failure(s) (counted above):")
        for e in ERRORS[:20]:
            print(f"  - {e}")
        if len(ERRORS) > 20:
            print(f"  … and {len(ERRORS) - 20} more")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
