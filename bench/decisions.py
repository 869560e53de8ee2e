"""From numbers to decisions (issue 20), validated by simulation and on the shared Step Law file.

Run: python bench/decisions.py [--quick] [--seeds N] [--parts abcd]

Every figure is printed beside a baseline computed in the same run:

a. Expected loss penalty on synthetic studies with a known loss surface (`fitting.synthetic`):
   per study, the recommendation's reported `expected_loss_penalty` at 4× and 16× beyond the
   proxies against the true penalty of acting on it (`SyntheticTruth.regret`, exact). The claim
   is about the expectation, so it is scored over studies: mean reported / mean true (target
   within 25%: 0.8–1.25), with a bootstrap 90% interval over studies. The same for "reuse the
   largest proxy's optimum" (a baseline every user has), whose penalty is mostly bias.
b. Step Law file, leave one model size out (every prior citing Step Law off): per held-out
   setting, the reported penalty beside the realised regret read on its own sweep
   (`fitting.backtest.RegretSurface`); and the loss-tolerance batch (ε = 0.5% and 1%) against the
   largest batch whose best measured loss over the learning rates is within ε of the setting's
   best (the true limit lies between it and the next batch swept), beside two baselines: the
   loss-optimal batch B* (today's answer) and 2·B*.
c. Budget-aware next proxies: on synthetic studies, a budget of half the FLOPs the study's
   proxies cost; the planner's designs (`fitting.budget.plan_budget`) against a same-budget
   uniform design (new scales log-evenly spaced from the largest proxy toward the target, each
   with a full grid: 5 learning rates ×2 apart, 3 batches ×2, 3 weight decays ×2, centred on the
   fit's prediction, as many as the budget buys). Runs are sampled from the true surface (noise,
   divergence); each design is refitted; scored by the target's learning-rate interval width
   and the true regret of the new recommendation.
d. Transfer check on synthetic μP studies whose truth is width-independent or drifts as
   width^−0.3 (tokens = 20·N, so tokens ride along with width): verdicts and whether the
   interval holds the truth; beside the law's width exponent alone. And the Step Law study (SP).
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_v] = "1"

import argparse
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(_ROOT))

import numpy as np

from fitting.backtest import RegretSurface
from fitting.budget import plan_budget
from fitting.datasets import STEPLAW_SEQ_LEN, load_steplaw
from fitting.decisions import largest_proxy_settings
from fitting.optima import group_scales
from fitting.plan import flops
from fitting.recommend import StudyInfo, recommend
from fitting.runs import COMPLETED, DIVERGED, RunTable
from fitting.study_fit import fit_study, predict
from fitting.synthetic import SyntheticTruth, TrueLaw, random_study, random_truth, sample_runs
from fitting.transfer_check import transfer_check

KEYS = ("n_params", "tokens", "width", "depth")
AXES = ("learning_rate", "batch_size", "weight_decay")
SUMMARY: list[tuple[str, str]] = []
# A recommendation whose penalty draws leave the basin this often is not priced by the bowl: the laws are
# too uncertain there (the answer says so in `beyond_basin`); part a also scores the rest on their own.
FAR_SHARE = 0.01
PRICED: tuple[list[float], list[float]] = ([], [])


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{100 * x:.3f}%"


def _ratio_ci(reported: np.ndarray, true: np.ndarray, seed: int = 0, n: int = 2000) -> tuple[float, float, float]:
    """mean(reported)/mean(true) with a bootstrap 90% interval over studies."""
    rng = np.random.default_rng(seed)
    k = len(true)
    idx = rng.integers(0, k, size=(n, k))
    boots = reported[idx].mean(axis=1) / np.maximum(true[idx].mean(axis=1), 1e-12)
    return float(reported.mean() / max(true.mean(), 1e-12)), *(float(x) for x in np.percentile(boots, [5, 95]))


def concat(a: RunTable, b: RunTable) -> RunTable:
    return RunTable(
        **{
            k: np.concatenate([getattr(a, k), getattr(b, k)])
            for k in (
                "n_params",
                "tokens",
                "width",
                "depth",
                "seq_len",
                "learning_rate",
                "batch_size",
                "weight_decay",
                "final_loss",
                "status",
            )
        }
    )


# --- a. expected penalty vs the truth -------------------------------------------------------
def part_a(seeds: Sequence[int], bootstrap: int) -> None:
    print("\n== a. expected loss penalty vs the true penalty (synthetic, exact regret on the true surface) ==")
    print(
        f"  {'kind':<8} {'target':>6} {'n':>4} {'reported mean':>14} {'true mean':>10} {'ratio [90%]':>22}"
        f" {'largest proxy: reported / true':>34}"
    )
    all_rep, all_true = [], []
    for kind in ("sp", "coarse", "mup"):
        got: dict[float, list[tuple[float, float, float, float]]] = {4.0: [], 16.0: []}
        for seed in seeds:
            runs, truth = random_study(seed, kind=kind)
            fit = fit_study(runs, bootstrap=bootstrap, loss_law=False, seed=seed, **truth.study_options())
            big = largest_proxy_settings(fit)
            for factor in got:
                tg = truth.targets((factor,))[0]
                T = {k: tg[k] for k in KEYS}
                try:
                    rec = recommend(fit, T, StudyInfo(**truth.study_options(), seq_len=truth.seq_len))
                except Exception as e:  # noqa: BLE001 - a failed study is counted and named
                    print(f"  {kind}-{seed}: {type(e).__name__}: {e}")
                    continue
                lp = rec.baselines.get("largest_proxy")
                if rec.expected_loss_penalty is None or lp is None or big is None:
                    continue
                settings = {
                    "learning_rate": rec.prediction.learning_rate.value,
                    "batch_size": None if rec.batch_size is None else rec.batch_size.value,
                    "weight_decay": None if rec.prediction.weight_decay is None else rec.prediction.weight_decay.value,
                }
                got[factor].append(
                    (
                        rec.expected_loss_penalty["value"],
                        truth.regret(T, settings),
                        lp["expected_loss_penalty"]["value"],
                        truth.regret(T, {a: big[1].get(a) for a in AXES}),
                        rec.expected_loss_penalty["beyond_basin"],
                    )
                )
        for factor, rows in got.items():
            a = np.array(rows)
            r, t, rl, tl, far = a[:, 0], a[:, 1], a[:, 2], a[:, 3], a[:, 4]
            ratio, lo, hi = _ratio_ci(r, t)
            lratio, llo, lhi = _ratio_ci(rl, tl)
            ok = far < FAR_SHARE
            cratio, clo, chi = _ratio_ci(r[ok], t[ok]) if ok.sum() > 2 else (math.nan, math.nan, math.nan)
            print(
                f"  {kind:<8} {factor:>5g}× {len(r):>4} {_pct(r.mean()):>14} {_pct(t.mean()):>10} "
                f"{ratio:>6.2f} [{lo:.2f}, {hi:.2f}]   {_pct(rl.mean())} / {_pct(tl.mean())} = {lratio:.2f} "
                f"[{llo:.2f}, {lhi:.2f}]   | {int(ok.sum())} priced (beyond_basin < {FAR_SHARE:.0%}): "
                f"{_pct(r[ok].mean())} / {_pct(t[ok].mean())} = {cratio:.2f} [{clo:.2f}, {chi:.2f}]"
            )
            all_rep += r.tolist()
            all_true += t.tolist()
            PRICED[0].extend(r[ok].tolist())
            PRICED[1].extend(t[ok].tolist())
    ratio, lo, hi = _ratio_ci(np.array(all_rep), np.array(all_true))
    print(
        f"  all: reported mean {_pct(float(np.mean(all_rep)))}, true mean {_pct(float(np.mean(all_true)))}, "
        f"ratio {ratio:.2f} [{lo:.2f}, {hi:.2f}] over {len(all_rep)} study-targets (target 0.80–1.25)"
    )
    SUMMARY.append(("expected penalty: reported / true (synthetic)", f"{ratio:.2f} [{lo:.2f}, {hi:.2f}]"))
    pr, pt = np.array(PRICED[0]), np.array(PRICED[1])
    ratio, lo, hi = _ratio_ci(pr, pt)
    print(
        f"  priced (beyond_basin < {FAR_SHARE:.0%}, {len(pr)} of {len(all_rep)}): reported {_pct(pr.mean())}, "
        f"true {_pct(pt.mean())}, ratio {ratio:.2f} [{lo:.2f}, {hi:.2f}]"
    )
    SUMMARY.append(("same, studies whose penalty is priced (beyond_basin < 1%)", f"{ratio:.2f} [{lo:.2f}, {hi:.2f}]"))


# --- b. Step Law, leave one size out ----------------------------------------------------------
def _max_batch_within(runs: RunTable, m: np.ndarray, eps: float) -> tuple[float, float | None]:
    """(largest batch swept whose best loss over the learning rates is within eps of the setting's best,
    the next batch swept above it or None)."""
    bs = runs.batch_size[m]
    loss = runs.final_loss[m]
    best = float(np.nanmin(loss))
    values = np.unique(np.round(bs, 6))
    ok = [b for b in values if np.nanmin(loss[np.round(bs, 6) == b]) <= (1 + eps) * best]
    top = float(max(ok))
    above = values[values > top]
    return top, (float(above.min()) if above.size else None)


def part_b(bootstrap: int) -> None:
    runs = load_steplaw()
    scales, sidx = group_scales(runs)
    sizes = sorted({sc.n_params for sc in scales})
    print(
        "\n== b. Step Law file, leave one model size out (priors citing Step Law off): reported penalty vs realised "
        "regret; loss-tolerance batch vs the largest measured batch within tolerance =="
    )
    rows: list[dict[str, Any]] = []
    for n in sizes:
        fit = fit_study(
            runs.subset(runs.n_params != n),
            bootstrap=bootstrap,
            seq_len=STEPLAW_SEQ_LEN,
            exclude_prior_sources=("steplaw",),
            loss_law=False,
        )
        for s, sc in enumerate(scales):
            if sc.n_params != n:
                continue
            m = (sidx == s) & runs.completed
            surf = RegretSurface.from_runs(runs.learning_rate[m], runs.batch_size[m], runs.final_loss[m])
            T = {k: float(getattr(sc, k)) for k in KEYS}
            row: dict[str, Any] = {"scale": T}
            for eps in (0.005, 0.01):
                rec = recommend(fit, T, StudyInfo(seq_len=STEPLAW_SEQ_LEN), max_loss_increase=eps)
                lr, bs = rec.prediction.learning_rate.value, rec.batch_size.value
                row["reported"] = rec.expected_loss_penalty["value"]
                row["reported_hi"] = rec.expected_loss_penalty["high"]
                row["realised"] = surf.regret(lr, bs)
                lp = rec.baselines["largest_proxy"]
                row["lp_reported"] = lp["expected_loss_penalty"]["value"]
                row["lp_realised"] = surf.regret(lp["learning_rate"], lp["batch_size"])
                tb = rec.tolerance_batch
                top, nxt = _max_batch_within(runs, m, eps)
                b_tol, lr_tol = tb["batch_size"]["value"], tb["learning_rate"]["value"]
                lr2 = predict(fit, T, 2 * bs).learning_rate.value
                row[eps] = {
                    "measured": top,
                    "next": nxt,
                    "tolerance": (b_tol, surf.regret(lr_tol, b_tol), tb["batch_size"]["low"], tb["batch_size"]["high"]),
                    "optimal": (bs, surf.regret(lr, bs)),
                    "double": (2 * bs, surf.regret(lr2, 2 * bs)),
                }
            rows.append(row)
    print(
        f"  {'setting (N, D)':<22} {'reported':>9} {'[90% high]':>10} {'realised':>9}   "
        f"{'largest proxy: reported':>24} {'realised':>9}"
    )
    for r in rows:
        print(
            f"  {r['scale']['n_params']:.3g}, {r['scale']['tokens']:.3g}".ljust(24)
            + f" {_pct(r['reported']):>9} {_pct(r['reported_hi']):>10} {_pct(r['realised']):>9}   "
            f"{_pct(r['lp_reported']):>24} {_pct(r['lp_realised']):>9}"
        )
    rep = np.array([r["reported"] for r in rows])
    real = np.array([r["realised"] for r in rows])
    print(
        f"  mean: reported {_pct(rep.mean())}, realised {_pct(real.mean())} (ratio {rep.mean() / real.mean():.2f}); "
        f"realised ≤ the 90% high in {np.mean(real <= np.array([r['reported_hi'] for r in rows])):.0%} of settings; "
        f"largest proxy reused: reported {_pct(float(np.mean([r['lp_reported'] for r in rows])))}, realised "
        f"{_pct(float(np.mean([r['lp_realised'] for r in rows])))}"
    )
    SUMMARY.append(("Step Law LOSO: penalty reported / realised (mean)", f"{_pct(rep.mean())} / {_pct(real.mean())}"))
    for eps in (0.005, 0.01):
        print(
            f"\n  loss-tolerance batch, ε = {100 * eps:g}%: batch returned / largest measured within ε, and the realised loss "
            "increase at (batch, its learning rate) on the held-out sweep"
        )
        print(
            f"  {'method':<34} {'batch / measured (median)':>26} {'|log2| (mean)':>14} "
            f"{'realised increase (mean)':>25} {'> 2ε':>6}"
        )
        for key, name in (
            ("tolerance", "hpscale tolerance batch"),
            ("optimal", "loss-optimal batch B* (today)"),
            ("double", "2·B* at its conditional LR"),
        ):
            ratio = np.array([r[eps][key][0] / r[eps]["measured"] for r in rows])
            inc = np.array([r[eps][key][1] for r in rows])
            print(
                f"  {name:<34} {float(np.median(ratio)):>26.2f} {float(np.mean(np.abs(np.log2(ratio)))):>14.2f} "
                f"{_pct(float(inc.mean())):>25} {float(np.mean(inc > 2 * eps)):>6.0%}"
            )
        within = [
            r[eps]["tolerance"][2] <= (r[eps]["next"] or math.inf) and r[eps]["measured"] <= r[eps]["tolerance"][3]
            for r in rows
        ]
        print(
            f"  the tolerance batch's 90% interval overlaps [measured, next batch swept) in {np.mean(within):.0%} of "
            f"{len(rows)} settings"
        )
        ratio = np.array([r[eps]["tolerance"][0] / r[eps]["measured"] for r in rows])
        SUMMARY.append(
            (
                f"Step Law LOSO tolerance batch ε={100 * eps:g}%: / measured (median)",
                f"{float(np.median(ratio)):.2f} (B*: "
                f"{float(np.median([r[eps]['optimal'][0] / r[eps]['measured'] for r in rows])):.2f})",
            )
        )


# --- c. budget-aware suggestions vs a same-budget uniform design ------------------------------
def _fill(truth: SyntheticTruth, scale: dict[str, float], run: dict[str, float | None]) -> dict[str, float]:
    """A run's hyperparameters with the axes the study does not sweep at the truth's fixed values."""
    fixed = np.exp(truth.log_optimum(*(scale[k] for k in KEYS)))
    return {
        a: float(run[a]) if (a in truth.swept and run.get(a) is not None) else float(fixed[j])
        for j, a in enumerate(AXES)
    }


def simulate(
    truth: SyntheticTruth, points: list[tuple[dict[str, float], dict[str, float | None]]], rng: np.random.Generator
) -> RunTable:
    recs = []
    for scale, run in points:
        hp = _fill(truth, scale, run)
        args = [scale[k] for k in KEYS]
        loss = float(truth.loss(*args, hp["learning_rate"], hp["batch_size"], hp["weight_decay"]))
        div = bool(truth.diverges(*args, hp["learning_rate"]))
        recs.append(
            {
                **{k: scale[k] for k in KEYS},
                "seq_len": truth.seq_len,
                **hp,
                "final_loss": None if div else loss * (1 + truth.noise * rng.standard_normal()),
                "status": DIVERGED if div else COMPLETED,
            }
        )
    return RunTable.from_records(recs)


def uniform_design(
    fit: Any, truth: SyntheticTruth, target: dict[str, float], budget: float
) -> list[tuple[dict[str, float], dict[str, float | None]]]:
    """m new scales log-evenly spaced on the segment from the smallest proxy to the point t of the way from the largest
    proxy to the target, each with a full grid (5 learning rates ×2 apart, 3 batches ×2, 3 weight decays ×2 where
    swept) centred on the fit's prediction; m = 3, 2 or 1 and t (or, when even the proxies' own range costs too much,
    how far along it the segment ends) chosen by bisection so that the design costs the budget."""
    proxies = truth.proxy_scales()
    small, big = min(proxies, key=flops), max(proxies, key=flops)
    counts = {
        "learning_rate": 5,
        "batch_size": 3 if "batch_size" in truth.swept else 1,
        "weight_decay": 3 if "weight_decay" in truth.swept else 1,
    }
    per_scale = math.prod(counts.values())

    def lerp(a: dict[str, float], b: dict[str, float], t: float) -> dict[str, float]:
        return {k: math.exp((1 - t) * math.log(a[k]) + t * math.log(b[k])) for k in KEYS}

    def scales(m: int, end: float) -> list[dict[str, float]]:
        # end in [0, 1]: along smallest → largest proxy; in (1, 2]: beyond, toward the target.
        stop = lerp(small, big, end) if end <= 1 else lerp(big, target, end - 1)
        return [lerp(small, stop, i / m) for i in range(1, m + 1)]

    def cost(m: int, end: float) -> float:
        return sum(per_scale * flops(s) for s in scales(m, end))

    m = next((m for m in (3, 2, 1) if cost(m, 1.0) <= budget), 1)
    lo, hi = 0.0, 2.0
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cost(m, mid) <= budget else (lo, mid)
    points = []
    for sc in scales(m, lo):
        p = predict(fit, sc)
        centre = {
            "learning_rate": p.learning_rate.value,
            "batch_size": p.batch_size.value if p.batch_size else None,
            "weight_decay": p.weight_decay.value if p.weight_decay else None,
        }
        grids = [
            [None]
            if centre[a] is None or counts[a] == 1
            else [centre[a] * 2.0 ** (k - (counts[a] - 1) / 2) for k in range(counts[a])]
            for a in AXES
        ]
        for lr in grids[0]:
            for bs in grids[1]:
                for wd in grids[2]:
                    points.append((sc, {"learning_rate": lr, "batch_size": bs, "weight_decay": wd}))
    return points


def _score(fit: Any, truth: SyntheticTruth, T: dict[str, float]) -> tuple[float, float]:
    p = predict(fit, T)
    settings = {
        "learning_rate": p.learning_rate.value,
        "batch_size": p.batch_size.value if p.batch_size else None,
        "weight_decay": p.weight_decay.value if p.weight_decay else None,
    }
    return math.log(p.learning_rate.high / p.learning_rate.low), truth.regret(T, settings)


def part_c(seeds: Sequence[int], bootstrap: int) -> None:
    print(
        "\n== c. budget-aware suggestions vs a same-budget uniform design (synthetic; budget = half the proxies' FLOPs; "
        "target 16× beyond) =="
    )
    for kind in ("sp", "mup"):
        res = []
        for seed in seeds:
            runs, truth = random_study(seed, kind=kind)
            opts = truth.study_options()
            fit0 = fit_study(runs, bootstrap=bootstrap, loss_law=False, seed=seed, **opts)
            tg = truth.targets((16.0,))[0]
            T = {k: tg[k] for k in KEYS}
            budget = 0.5 * float(np.sum(6 * runs.n_params * runs.tokens))
            plan = plan_budget(fit0, T, budget)
            pts = [(it["scale"], r) for it in plan["items"] for r in it["runs"]]
            spent = plan["budget"]["spent_flops"]
            uni = uniform_design(fit0, truth, T, budget)
            uni_cost = sum(flops(s) for s, _ in uni)
            rng = np.random.default_rng(seed + 777)
            fit_p = fit_study(
                concat(runs, simulate(truth, pts, rng)), bootstrap=bootstrap, loss_law=False, seed=seed, **opts
            )
            fit_u = fit_study(
                concat(runs, simulate(truth, uni, rng)), bootstrap=bootstrap, loss_law=False, seed=seed, **opts
            )
            w0, r0 = _score(fit0, truth, T)
            wp, rp = _score(fit_p, truth, T)
            wu, ru = _score(fit_u, truth, T)
            res.append((w0, r0, wp, rp, wu, ru, spent / budget, uni_cost / budget, len(pts), len(uni)))
        a = np.array(res)
        print(
            f"  {kind}: {len(a)} seeds; planner spent {a[:, 6].mean():.0%} of the budget on {a[:, 8].mean():.0f} runs "
            f"on average, uniform {a[:, 7].mean():.0%} on {a[:, 9].mean():.0f}"
        )
        print(f"    {'design':<28} {'LR interval width at target (mean log)':>40} {'true regret (mean)':>20}")
        for name, w, r in (
            ("before (no new runs)", 0, 1),
            ("budget-aware suggestions", 2, 3),
            ("uniform, same budget", 4, 5),
        ):
            print(f"    {name:<28} {a[:, w].mean():>40.3f} {_pct(float(a[:, r].mean())):>20}")
        better_w = float(np.mean(a[:, 2] < a[:, 4]))
        better_r = float(np.mean(a[:, 3] < a[:, 5]))
        print(f"    suggestions narrower than uniform in {better_w:.0%} of seeds, lower regret in {better_r:.0%}")
        SUMMARY.append(
            (
                f"budget plan vs uniform ({kind}): LR width / regret",
                f"{a[:, 2].mean():.3f} vs {a[:, 4].mean():.3f} / {_pct(float(a[:, 3].mean()))} vs "
                f"{_pct(float(a[:, 5].mean()))} (narrower in {better_w:.0%})",
            )
        )


# --- d. transfer check -------------------------------------------------------------------------
def mup_truth(seed: int, width_exponent: float) -> SyntheticTruth:
    tr = random_truth(seed, "mup")
    lr = tr.laws["learning_rate"]
    laws = dict(tr.laws)
    laws["learning_rate"] = TrueLaw(lr.const, {"width": width_exponent, "depth": lr.exponents["depth"], "tokens": 0.0})
    return replace(tr, laws=laws)


def part_d(seeds: Sequence[int], bootstrap: int) -> None:
    print("\n== d. transfer check on synthetic μP studies (tokens = 20·N ride along with width) ==")
    print(
        f"  {'truth':<22} {'transfers':>9} {'drifts':>7} {'undetermined':>13} {'interval holds truth':>21}"
        f" {'law width exponent alone holds truth':>37}"
    )
    for a_w in (0.0, -0.3):
        verdicts, holds, alone = [], [], []
        for seed in seeds:
            truth = mup_truth(seed, a_w)
            runs, truth = sample_runs(truth, np.random.default_rng(seed))
            fit = fit_study(runs, bootstrap=bootstrap, loss_law=False, seed=seed, parameterization="mup")
            tc = transfer_check(fit, "mup")
            c = next(c for c in tc["checks"] if c["axis"] == "width" and c["hyperparameter"] == "learning_rate")
            verdicts.append(c["verdict"])
            holds.append(c["exponent"]["low"] <= a_w <= c["exponent"]["high"])
            e = fit.laws["learning_rate"].exponent("width")
            alone.append(e.low <= a_w <= e.high)
        n = len(verdicts)
        print(
            f"  width^{a_w:+.1f}".ljust(24)
            + f" {verdicts.count('transfers') / n:>9.0%} {verdicts.count('drifts') / n:>7.0%}"
            f" {verdicts.count('undetermined') / n:>13.0%} {np.mean(holds):>21.0%} {np.mean(alone):>37.0%}"
        )
        SUMMARY.append(
            (
                f"transfer check, truth width^{a_w:+.1f}: transfers/drifts/undetermined",
                f"{verdicts.count('transfers')}/{verdicts.count('drifts')}/{verdicts.count('undetermined')} of {n}; "
                f"interval holds truth {np.mean(holds):.0%}",
            )
        )
    fit = fit_study(load_steplaw(), bootstrap=bootstrap, seq_len=STEPLAW_SEQ_LEN, loss_law=False)
    tc = transfer_check(fit, "sp")
    for c in tc["checks"]:
        e = c["exponent"]
        print(
            f"  Step Law (SP) {c['axis']:<5} {c['hyperparameter']:<13} {c['verdict']:<12} "
            f"{e['value']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]  path {c['path']}"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer seeds")
    ap.add_argument("--seeds", type=int, default=None, help="synthetic seeds per kind (default 20, quick 6)")
    ap.add_argument("--parts", default="abcd")
    ap.add_argument("--bootstrap", type=int, default=100)
    args = ap.parse_args()
    n = args.seeds or (6 if args.quick else 20)
    t0 = time.perf_counter()
    if "a" in args.parts:
        part_a(range(n), args.bootstrap)
    if "b" in args.parts:
        part_b(args.bootstrap)
    if "c" in args.parts:
        part_c(range(n), args.bootstrap)
    if "d" in args.parts:
        part_d(range(n), args.bootstrap)
    print("\n== summary ==")
    for what, val in SUMMARY:
        print(f"  {what:<60} {val}")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
