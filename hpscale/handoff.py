"""Hand suggested proxy runs to the tools that run them, and print decisions for people.

`hpscale suggest … --to optuna|wandb-sweep|json` takes the `/suggestions` answer (a budget
plan's items carry their `runs`; older answers a `sweep` per scale) and:

- **optuna**: enqueues one trial per run into an Optuna study (`study.enqueue_trial`), params
  `n_params, tokens, width, depth, learning_rate, batch_size[, weight_decay]` (the objective reads
  them with `trial.suggest_*`, which returns the enqueued values), user attributes naming the
  hpscale study, fit and reason. Trials run by any Optuna worker come back with
  `hpscale import --from optuna` (params map by name, the value is the final loss).
- **wandb-sweep**: a W&B sweep configuration, `method: grid` over one parameter `hpscale` whose
  values are the runs (a grid over the suggested points, not a Cartesian product that would mix
  one scale's learning rates with another's sizes); a run reads `wandb.config.hpscale`, and
  `hpscale import --from wandb` maps its nested `hpscale.*` config leaves back to run fields.
- **json**: `{"study", "fit_id", "runs": [...]}` for a launcher; each run has the fields a
  submission needs but the loss, and a `run_key` to submit it with (retries never duplicate).

Imports only the client side (optuna and PyYAML lazily, from the `optuna` / `wandb` extras).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SCALE_FIELDS = ("n_params", "tokens", "width", "depth")
HP_FIELDS = ("learning_rate", "batch_size", "weight_decay")


def _fmt(value: Any) -> str:
    return "—" if value is None else f"{float(value):.4g}"


def suggested_runs(study: str, answer: Mapping[str, Any], *, seq_len: int | None = None) -> list[dict[str, Any]]:
    """Every run of a `/suggestions` answer as a submission-ready dict (no loss yet) with a stable run_key."""
    fit_id = answer.get("fit_id")
    runs: list[dict[str, Any]] = []
    for i, item in enumerate(answer.get("items") or []):
        scale = {k: item["scale"].get(k) for k in SCALE_FIELDS if item["scale"].get(k) is not None}
        points = item.get("runs")
        if not points:  # a suggestion without a budget: its sweep's learning rates at its batch
            points = [
                {"learning_rate": lr, "batch_size": item.get("batch_size"), "weight_decay": item.get("weight_decay")}
                for lr in (item.get("sweep") or {}).get("learning_rate", [item.get("learning_rate")])
            ]
        for j, p in enumerate(points):
            run: dict[str, Any] = {**scale, **{a: p.get(a) for a in HP_FIELDS if p.get(a) is not None}}
            if isinstance(run.get("batch_size"), float):
                run["batch_size"] = max(1, round(run["batch_size"]))
            if seq_len:
                run["seq_len"] = seq_len
            run["run_key"] = f"hpscale-{study}-fit{fit_id}-{i + 1}.{j + 1}"
            run["extra"] = {"hpscale_design": i + 1, "hpscale_fit_id": fit_id if fit_id is not None else ""}
            runs.append(run)
    return runs


def to_json(study: str, answer: Mapping[str, Any], runs: Sequence[Mapping[str, Any]]) -> str:
    return json.dumps(
        {"study": study, "fit_id": answer.get("fit_id"), "budget": answer.get("budget"), "runs": list(runs)}, indent=2
    )


def to_optuna(
    study: str, answer: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], storage: str, optuna_study: str
) -> int:
    """Enqueue one trial per run into `optuna_study` at `storage` (created if needed); returns how many were new."""
    try:
        import optuna
    except ImportError as error:  # pragma: no cover - the extra is missing
        raise SystemExit("--to optuna needs Optuna: pip install 'hpscale[optuna]'") from error
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    target = optuna.create_study(storage=storage, study_name=optuna_study, direction="minimize", load_if_exists=True)
    before = len(target.get_trials(deepcopy=False))
    for run in runs:
        params = {k: run[k] for k in (*SCALE_FIELDS, *HP_FIELDS) if run.get(k) is not None}
        target.enqueue_trial(
            params,
            user_attrs={
                "hpscale_study": study,
                "hpscale_fit_id": answer.get("fit_id"),
                "hpscale_run_key": run["run_key"],
                **({"seq_len": run["seq_len"]} if run.get("seq_len") else {}),
            },
            skip_if_exists=True,
        )
    return len(target.get_trials(deepcopy=False)) - before


def wandb_sweep_config(
    study: str, answer: Mapping[str, Any], runs: Sequence[Mapping[str, Any]], *, program: str | None = None
) -> dict[str, Any]:
    """A W&B grid sweep over exactly the suggested runs (one parameter `hpscale`, one value per run)."""
    values = [{k: v for k, v in run.items() if k != "extra"} for run in runs]
    config: dict[str, Any] = {
        "name": f"hpscale {study} (fit {answer.get('fit_id')})",
        "description": "proxy runs suggested by hpscale; each run reads wandb.config.hpscale "
        "(n_params, tokens, width, depth, learning_rate, batch_size, weight_decay, run_key) and logs final_loss",
        "method": "grid",
        "metric": {"name": "final_loss", "goal": "minimize"},
        "parameters": {"hpscale": {"values": values}},
    }
    if program:
        config["program"] = program
    return config


def write_wandb_sweep(path: Path, config: Mapping[str, Any]) -> None:
    try:
        import yaml
    except ImportError as error:  # pragma: no cover - the extra is missing
        raise SystemExit("--to wandb-sweep needs PyYAML: pip install 'hpscale[wandb]'") from error
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False), encoding="utf-8")


def format_suggestions(study: str, answer: Mapping[str, Any]) -> str:
    lines = [f"study {study}, fit {answer.get('fit_id')} (data version {answer.get('data_version')})"]
    budget = answer.get("budget")
    if budget:
        pen = budget.get("expected_loss_penalty") or {}
        lines.append(
            f"budget {_fmt(budget.get('budget_flops'))} FLOPs, planned {_fmt(budget.get('spent_flops'))}; expected loss "
            f"penalty at the target {100 * (pen.get('before') or 0):.3g}% → {100 * (pen.get('after') or 0):.3g}%"
        )
        for axis, iv in (budget.get("target_interval") or {}).items():
            b, a = iv["before"], iv["after"]
            lines.append(f"  {axis:<14} 90% [{_fmt(b[0])}, {_fmt(b[1])}] → [{_fmt(a[0])}, {_fmt(a[1])}]")
        lines.append(f"criterion: {budget.get('criterion')}")
    lines.append("")
    for i, item in enumerate(answer.get("items") or [], start=1):
        sc = item["scale"]
        lines.append(
            f"{i}. N={_fmt(sc.get('n_params'))} D={_fmt(sc.get('tokens'))} width={_fmt(sc.get('width'))} "
            f"depth={_fmt(sc.get('depth'))}  {item.get('n_runs', len(item.get('runs') or []) or '')} run(s), "
            f"{_fmt(item.get('flops'))} FLOPs  {item.get('pattern', '')}"
        )
        for axis, values in (item.get("sweep") or {}).items():
            lines.append(f"     {axis}: {', '.join(_fmt(v) for v in values)}")
        lines.append(f"     {item.get('reason', '')}")
    for note in [*(answer.get("notes") or []), *(answer.get("warnings") or [])]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def format_transfer_check(study: str, answer: Mapping[str, Any]) -> str:
    lines = [
        f"study {study} ({answer.get('parameterization')}), fit {answer.get('fit_id')}; tolerance ±{answer.get('tolerance')}",
        "",
        f"{'axis':<6} {'hyperparameter':<14} {'verdict':<13} {'drift exponent [90%]':<24} along the proxies",
    ]
    for c in answer.get("checks") or []:
        e = c["exponent"]
        path = ", ".join(f"{v}×{s:.2g}" for v, s in (c.get("path") or {}).items() if s)
        lines.append(
            f"{c['axis']:<6} {c['hyperparameter']:<14} {c['verdict']:<13} "
            f"{e['value']:+.2f} [{e['low']:+.2f}, {e['high']:+.2f}]".ljust(60)
            + f" {path}"
        )
    for c in answer.get("checks") or []:
        extra = [*(c.get("notes") or []), *(c.get("hints") or [])]
        if c.get("what_to_run"):
            extra.insert(0, f"to decide: {c['what_to_run']}")
        if extra:
            lines += ["", f"{c['axis']} / {c['hyperparameter']}: {c['message']}"] + [f"  - {x}" for x in extra]
    reuse = answer.get("reuse_base")
    if reuse and reuse.get("available"):
        pen, rec = reuse["expected_loss_penalty"], reuse["recommendation_penalty"]
        lines += [
            "",
            f"reusing the base model's optimum ({reuse['chosen_as']}) at the target costs "
            f"{100 * pen['value']:.3g}% of loss [90% {100 * pen['low']:.3g}–{100 * pen['high']:.3g}%]; "
            f"the recommendation {100 * rec['value']:.3g}% [{100 * rec['low']:.3g}–{100 * rec['high']:.3g}%]",
        ]
    for w in answer.get("warnings") or []:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


__all__ = [
    "format_suggestions",
    "format_transfer_check",
    "suggested_runs",
    "to_json",
    "to_optuna",
    "wandb_sweep_config",
    "write_wandb_sweep",
]
