"""Importers: runs that live in experiment trackers and HPO studies, as hpscale runs.

Each importer (`optuna`, `mlflow`, `wandb`) reads its tool's runs with that tool's own
library (an optional extra: `pip install 'hpscale[optuna]'` …) and maps each to a run dict
with `service.importers.common.to_run` (a default mapping by common names, overridable by
`--map`); `service.runs.import_runs` then validates all of them before writing any, exactly
as for a CSV. Run keys come from the source's own ids, so importing again adds nothing.
"""
