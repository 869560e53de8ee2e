"""The mapping every importer shares: a source run's flat names → hpscale run fields.

A source run is a flat dict of names to values (an Optuna trial's params and user
attributes, an MLflow run's params and metrics, a W&B run's config and summary). Each run
field is read from the first of its *aliases* present (below) unless `--map NAME=FIELD`
names the source name for it; every other scalar goes into `extra`, so nothing is silently
dropped. A field no run provides at all is one error with a `--map` hint (not one error
per run), and two names mapped onto one field are refused.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from service.csv_io import REQUIRED_FIELDS, number_or_text
from service.errors import DomainError, InvalidArgument
from service.limits import MAX_EXTRA_KEYS
from store.queries import RUN_FIELDS

# Field → names it goes by in training code and trackers, most specific first.
ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("learning_rate", "lr", "peak_lr", "max_lr", "optimizer.lr", "optim.lr"),
    "batch_size": ("batch_size", "bs", "global_batch_size", "train_batch_size", "batch"),
    "weight_decay": ("weight_decay", "wd", "optimizer.weight_decay", "optim.weight_decay"),
    "n_params": ("n_params", "num_params", "n_parameters", "num_parameters", "params", "model_params"),
    "tokens": ("tokens", "n_tokens", "num_tokens", "train_tokens", "total_tokens", "tokens_seen"),
    "width": ("width", "d_model", "hidden_size", "n_embd", "model_dim"),
    "depth": ("depth", "n_layers", "num_layers", "n_layer", "num_hidden_layers"),
    "seq_len": ("seq_len", "sequence_length", "max_seq_len", "block_size", "context_length"),
    "seed": ("seed",),
    "final_loss": ("final_loss", "val_loss", "eval_loss", "eval/loss", "validation_loss", "loss", "train_loss"),
}
_MAPPABLE = frozenset(RUN_FIELDS) - {"run_key", "status", "loss_curve", "curves", "extra"}
# What a tracker's run name (W&B display name, MLflow run name) is kept as in `extra`.
RUN_NAME = "run_name"
# A source that waits this long without answering is reported, not waited on.
DEFAULT_TIMEOUT = 10.0

# user:password@ (or a bare token@) after a URL scheme, and secret-looking query parameters.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/@\s'\"]+)@")
_SECRET_PARAMETER = re.compile(
    r"(?i)(?P<name>[?&;](?:password|passwd|pwd|secret|token|access_token|api_key|apikey|key)=)[^&;\s'\"]*"
)


def redact_credentials(text: str) -> str:
    """`text` with the credentials of any URL in it hidden: `postgresql://u:***@host/db`,
    `https://***@host`, `?password=***`. For importer errors, which name the source's URL."""

    def userinfo(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user}:***@" if colon else f"{match['scheme']}***@"

    return _SECRET_PARAMETER.sub(r"\g<name>***", _USERINFO.sub(userinfo, text))


@contextmanager
def source_errors(what: str, location: str) -> Iterator[None]:
    """Any failure of a tracker's own library while reading `location` (a storage URL, a
    tracking URI) as one InvalidArgument without credentials, instead of a traceback that
    prints the URL's password."""
    try:
        yield
    except DomainError:
        raise
    except Exception as error:  # noqa: BLE001 - a foreign library's failure, reported without secrets
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise InvalidArgument(
            f"cannot read {what} at {redact_credentials(location)}: {redact_credentials(reason)[:500]}"
        ) from None


def check_mapping(mapping: Mapping[str, str]) -> None:
    """`--map` values must be run fields, at most one name per field."""
    unknown = sorted({f for f in mapping.values() if f not in _MAPPABLE and not f.startswith("extra.")})
    if unknown:
        raise InvalidArgument(
            f"--map names unknown run field(s): {', '.join(unknown)}; fields are {', '.join(sorted(_MAPPABLE))}"
        )
    by_field: dict[str, list[str]] = {}
    for name, field in mapping.items():
        by_field.setdefault(field, []).append(name)
    clashes = "; ".join(
        f"{field} ← {', '.join(map(repr, names))}" for field, names in by_field.items() if len(names) > 1
    )
    if clashes:
        raise InvalidArgument(f"--map sends two names to the same field: {clashes}; map only one of them")


def scalar(value: Any) -> float | int | str | None:
    """A value as a number when it reads as one (MLflow params are strings), else text."""
    if value is None or isinstance(value, (dict, list, tuple)):
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return value
    number = number_or_text(str(value).strip())
    return number[:1024] if isinstance(number, str) else number


def flatten(values: Mapping[str, Any], prefix: str = "", depth: int = 3) -> dict[str, Any]:
    """Nested config dicts as dotted names (`optimizer.lr`); names starting with `_` (tools'
    bookkeeping such as W&B's `_wandb`, `_step`) are left out."""
    flat: dict[str, Any] = {}
    for raw_key, value in values.items():
        key = str(raw_key)
        if key.startswith("_"):
            continue
        if isinstance(value, Mapping) and depth > 0:
            flat.update(flatten(value, f"{prefix}{key}.", depth - 1))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def field_sources(names: Iterable[str], mapping: Mapping[str, str]) -> dict[str, str]:
    """Which source name feeds each run field, over all names the source's runs use."""
    present = set(names)
    by_field = {field: name for name, field in mapping.items()}
    for field, aliases in ALIASES.items():
        if field not in by_field:
            found = next((alias for alias in aliases if alias in present and alias not in mapping), None)
            if found is None:  # a nested config's leaf: model.n_params, optimizer.lr
                found = next(
                    (n for alias in aliases for n in sorted(present) if n.endswith("." + alias) and n not in mapping),
                    None,
                )
            if found is not None:
                by_field[field] = found
    return by_field


def check_required(sources: Mapping[str, str], names: Iterable[str], what: str) -> None:
    """One error (with a --map hint) for a required field that no run provides."""
    missing = [field for field in REQUIRED_FIELDS if field not in sources]
    if missing:
        shown = ", ".join(sorted(set(names))[:40]) or "(none)"
        raise InvalidArgument(
            f"no {what} provides {', '.join(missing)} (looked for "
            + "; ".join(f"{f}: {'/'.join(ALIASES[f][:4])}" for f in missing)
            + f"): name the ones that do with --map NAME=FIELD; the names found are: {shown}"
        )


def to_run(
    values: Mapping[str, Any],
    sources: Mapping[str, str],
    *,
    run_key: str,
    status: str,
    loss_curve: Sequence[Sequence[float]] | None = None,
    curves: Mapping[str, Sequence[Sequence[float]]] | None = None,
    curve_x: str = "tokens",
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One hpscale run dict: fields from their source names, the rest into `extra`.

    A completed run whose loss is NaN/inf is `diverged` (trackers log what training saw;
    W&B writes a NaN as null, so a loss that is there but null counts as NaN too). A source
    without a weight decay gives an unknown one (null), not 0. `loss_curve` and `curves` (in
    `curve_x` units) are the source's history; `extra` adds the tool's own facts (its run
    name, its trial state)."""
    run: dict[str, Any] = {"run_key": run_key[:128], "status": status, "weight_decay": None}
    used = set()
    for field, name in sources.items():
        if name in values:
            used.add(name)
            value = scalar(values[name])
            if value is not None and value != "":
                if field.startswith("extra."):
                    run.setdefault("extra", {})[field.removeprefix("extra.")] = value
                else:
                    run[field] = value
    loss = run.get("final_loss")
    loss_name = sources.get("final_loss")
    if (isinstance(loss, float) and not math.isfinite(loss)) or (
        loss_name is not None and loss_name in values and values[loss_name] is None
    ):
        run.pop("final_loss", None)
        if status == "completed":
            run["status"] = "diverged"
    if run["status"] != "completed":
        run.pop("final_loss", None)
    extra = {**dict(extra or {}), **dict(run.get("extra") or {})}
    for name in sorted(values):
        if name in used or name in extra or len(extra) >= MAX_EXTRA_KEYS:
            continue
        value = scalar(values[name])
        if value is None or value == "" or (isinstance(value, float) and not math.isfinite(value)):
            continue
        extra[name[:128]] = value
    if loss_curve:
        run["loss_curve"] = [list(point) for point in loss_curve]
    if curves:
        run["curves"] = {name[:64]: [list(p) for p in points] for name, points in curves.items() if points}
    if (loss_curve or curves) and curve_x != "tokens":
        extra["loss_curve_x"] = curve_x
    if extra:
        run["extra"] = extra
    return run


def finite_points(points: Sequence[Sequence[Any]], cap: int) -> list[list[float]]:
    """A history as curve points: finite (x ≥ 0, value) pairs only, in order, at most `cap`
    (evenly thinned past it: the stored curve is downsampled further by the service)."""
    kept = []
    for x, y in points:
        try:
            fx, fy = float(x), float(y)
        except (TypeError, ValueError):
            continue
        if math.isfinite(fx) and math.isfinite(fy) and fx >= 0:
            kept.append([fx, fy])
    if len(kept) > cap:
        step = (len(kept) - 1) / (cap - 1)
        kept = [kept[round(i * step)] for i in range(cap)]
    return kept


def map_runs(
    runs: Iterable[tuple[str, str, Mapping[str, Any]]],
    mapping: Mapping[str, str],
    what: str,
    default_sources: Callable[[set[str]], Mapping[str, str]] | None = None,
    extras: Mapping[str, Mapping[str, Any]] | None = None,
    histories: Mapping[str, Mapping[str, Any]] | None = None,
) -> list[tuple[str, dict[str, Any]]]:
    """(source id, run) for each (source id, status, names → values) of a source's runs.

    `extras`: per source id, facts of the tool to keep in `extra` (run name, trial state);
    `histories`: per source id, keyword arguments of `to_run` for its curves.

    Each field's source name is found over the names all the runs use (`field_sources`);
    `default_sources(names)` gives the source of fields that `mapping` does not name (an
    Optuna trial's value is its loss). A required field that no run provides is one error,
    `what` naming the kind of name the source has."""
    runs = list(runs)
    names = {name for _, _, values in runs for name in values}
    sources = field_sources(names, mapping)
    if default_sources is not None:
        mapped = set(mapping.values())
        sources.update({f: name for f, name in default_sources(names).items() if f not in mapped})
    check_required(sources, names, what)
    extras = extras or {}
    histories = histories or {}
    return [
        (
            source_id,
            to_run(
                values,
                sources,
                run_key=source_id,
                status=status,
                extra=extras.get(source_id),
                **histories.get(source_id, {}),
            ),
        )
        for source_id, status, values in runs
    ]
