"""Training-loop hooks for Hugging Face `Trainer` and PyTorch Lightning, on `Client.track`.

    from hpscale.callbacks import HpscaleTrainerCallback      # Hugging Face transformers
    hp_run = HpscaleTrainerCallback(hp, "gpt-proxies")        # checks the study and token now
    trainer = Trainer(model, args, train_dataset=ds, callbacks=[hp_run])
    hp_run.train(trainer)          # trainer.train(); an exception is recorded as failed

    from hpscale.callbacks import HpscaleLightningCallback    # lightning / pytorch_lightning
    trainer = L.Trainer(max_steps=..., callbacks=[HpscaleLightningCallback(hp, "gpt-proxies")])
    trainer.fit(module, loader)

What each run records, with nothing typed by hand (a keyword argument wins over what is read;
one that contradicts the framework gets a warning):

- `learning_rate`, `weight_decay`: the optimizer's `param_groups` (peak `initial_lr` under a
  scheduler; the largest over groups); HF falls back on `TrainingArguments`.
- `batch_size` (global, sequences): per-device batch × gradient accumulation × world size.
- `seq_len`: the length of the first training example's `input_ids` (a dict) or of a 1-D
  integer tensor (alone or first in a tuple); `tokens` = tokens per step × steps (HF: the
  Trainer's own count with `include_num_input_tokens_seen`).
- `n_params` (unique parameters; HF's non-embedding count goes into extra), `width` and
  `depth` from the model config's common names (`hidden_size`/`d_model`/`n_embd`/`width`,
  `num_hidden_layers`/`n_layer`/`num_layers`/`depth`) or Lightning's `hparams`.

Statuses: `diverged` on a non-finite loss or grad norm, or non-finite weights at the end
(HF's `logging_nan_inf_filter`, on by default, hides NaN losses from its logs; the weights
and grad norm still show them). `failed` on an exception: Lightning reports it to callbacks;
HF does not, so use `callback.train(trainer)` or `with callback: trainer.train()` (a crash
that ends the process is still recorded at exit, but only the wrapper sees one that a script
catches). The final loss is the last evaluation loss measured at the final step (an
`evaluate()` inside `with callback:` counts), else the mean training loss of the last ~10% of
steps (the callback asks the framework for that window), else HF's `train_loss`; a run with
no loss at all is `failed` with a warning.

One run per `train()`/`fit()` call (a reused callback's later runs get `run_key`-2, -3, …), or
one per `with callback:` block. Only the global-zero process submits, with the framework's
cross-process (reduced) losses and the global batch. Curves are in tokens when tokens per step
are known, else in steps (`extra.loss_curve_x = "steps"`).

Neither library is a dependency of hpscale: each class subclasses the library's callback base
when it is installed. `check=True` (default) raises `HpscaleError` before training for a missing
study, a refused token or a field the server would refuse; `check="warn"` warns instead; an
unreachable server only warns (the run is saved at the end if it still cannot be sent).
"""

from __future__ import annotations

import atexit
import contextlib
import math
import os
import sys
import threading
import warnings
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import httpx

from hpscale.client import RUN_FIELDS, Client, HpscaleError, TrackedRun, split_fields

try:  # pragma: no cover - depends on what is installed
    from transformers import TrainerCallback as _HFBase
except ImportError:  # pragma: no cover
    _HFBase = object
try:  # pragma: no cover
    from lightning.pytorch import Callback as _LightningBase
except ImportError:  # pragma: no cover
    try:
        from pytorch_lightning import Callback as _LightningBase
    except ImportError:
        _LightningBase = object

__all__ = ["HpscaleLightningCallback", "HpscaleTrainerCallback"]

WIDTH_NAMES = ("hidden_size", "d_model", "n_embd", "width", "dim", "embed_dim")
DEPTH_NAMES = ("num_hidden_layers", "n_layer", "num_layers", "n_layers", "depth")
REQUIRED = ("n_params", "tokens", "learning_rate", "batch_size")


# --- reading what the framework knows ------------------------------------------------------


def optimizer_hparams(optimizer: Any) -> dict[str, float]:
    """Peak learning rate and weight decay from an optimizer's param_groups (groups with
    parameters only; `initial_lr` is what an LR scheduler started from)."""
    groups = [g for g in getattr(optimizer, "param_groups", None) or [] if g.get("params")]
    found: dict[str, float] = {}
    rates = [float(g.get("initial_lr", g.get("lr", 0.0)) or 0.0) for g in groups]
    if rates and max(rates) > 0:
        found["learning_rate"] = max(rates)
    if groups and any("weight_decay" in g for g in groups):
        found["weight_decay"] = max(float(g.get("weight_decay", 0.0)) for g in groups)
    return found


def parameter_count(module: Any) -> int | None:
    try:
        return sum(p.numel() for p in module.parameters())  # parameters() yields shared ones once
    except (AttributeError, TypeError):
        return None


def shape_from(*sources: Any) -> dict[str, int]:
    """`width` and `depth` from the first config / hparams that names them."""
    found: dict[str, int] = {}
    for names, field in ((WIDTH_NAMES, "width"), (DEPTH_NAMES, "depth")):
        for source in sources:
            if source is None:
                continue
            for name in names:
                value = source.get(name) if isinstance(source, Mapping) else getattr(source, name, None)
                if isinstance(value, int) and not isinstance(value, bool) and value > 0:
                    found[field] = value
                    break
            if field in found:
                break
    return found


def sequence_length(dataset: Any) -> int | None:
    """Tokens per sequence from a map-style dataset's first example (indexing draws no
    random numbers, unlike iterating a shuffling loader), or None if it holds no tokens."""
    if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
        return None
    try:
        if len(dataset) == 0:
            return None
        example = dataset[0]
    except Exception:  # noqa: BLE001 - a dataset that cannot be indexed tells us nothing
        return None
    if isinstance(example, Mapping):
        example = example.get("input_ids")
    elif isinstance(example, (tuple, list)) and example and hasattr(example[0], "dtype"):
        example = example[0]
    if hasattr(example, "dtype") and hasattr(example, "shape"):
        is_integer = not getattr(example.dtype, "is_floating_point", True) and not getattr(
            example.dtype, "is_complex", False
        )
        return int(example.shape[-1]) if is_integer and len(example.shape) == 1 else None
    if isinstance(example, (list, tuple)) and example and all(isinstance(t, int) for t in example):
        return len(example)
    return None


def _number(value: Any) -> float | None:
    try:
        number = float(value.item() if hasattr(value, "item") else value)
    except (TypeError, ValueError, RuntimeError):
        return None
    return number


def _agrees(hand: Any, inferred: Any) -> bool:
    try:
        return math.isclose(float(hand), float(inferred), rel_tol=1e-6)
    except (TypeError, ValueError):
        return hand == inferred


def weights_finite(module: Any) -> bool:
    """Whether every parameter is finite (checked once, at the end of training)."""
    try:
        import torch

        with torch.no_grad():
            return all(bool(torch.isfinite(p).all()) for p in module.parameters())
    except (ImportError, AttributeError, TypeError):
        return True


def _env_rank() -> int:
    """This process's rank as launchers announce it (torchrun: RANK; Lightning's DDP children:
    LOCAL_RANK), before any process group exists."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 0


# --- crashes the framework does not report (HF) -----------------------------------------------

_OPEN: weakref.WeakSet[_Tracker] = weakref.WeakSet()
_LAST_UNCAUGHT: list[str] = []
_HOOKED = threading.Lock()
_hooked: list[bool] = []  # one entry once the hooks are in


def _hook_process_exit() -> None:
    """Once per process: remember an uncaught exception, and at exit record every run still
    open as failed (a crash in HF training, which has no exception callback)."""
    with _HOOKED:
        if _hooked:
            return
        _hooked.append(True)
        previous = sys.excepthook

        def excepthook(kind: type[BaseException], value: BaseException, tb: Any) -> None:
            _LAST_UNCAUGHT.append(f"{kind.__name__}: {value}"[:500])
            previous(kind, value, tb)

        sys.excepthook = excepthook
        atexit.register(_abandon_open_runs)


def _abandon_open_runs() -> None:
    error = _LAST_UNCAUGHT[-1] if _LAST_UNCAUGHT else "the process exited during training"
    for tracker in list(_OPEN):
        tracker._end(error=error)


# --- what both callbacks share ---------------------------------------------------------------


class _Tracker:
    """One `TrackedRun` per training call (or `with` block), fields read from the framework,
    submitted once by the global-zero process."""

    def __init__(
        self,
        client: Client,
        study: str,
        *,
        run_key: str | None = None,
        tokens_per_step: float | None = None,
        check: bool | Literal["warn"] = True,
        **fields: Any,
    ) -> None:
        self.client = client
        self.study = study
        self.hand, self.hand_extra = split_fields(fields)  # a misspelt field is a TypeError now
        self.hand_tokens_per_step = tokens_per_step
        self.base_key = run_key
        self.check = check
        self.run: TrackedRun | None = None  # the current (or last) run
        self.runs: list[TrackedRun] = []  # every run this callback submitted or is tracking
        self.managed = False  # inside `with callback:`: the block, not the framework, ends the run
        self.zero = _env_rank() == 0
        self.tokens_per_step: float | None = None
        self.max_steps: int | None = None
        self.eval_loss: tuple[int, float] | None = None  # (step, loss) of the last evaluation
        self.window_loss: tuple[int, float] | None = None  # (step, mean loss) of the last window
        self.train_loss: float | None = None
        self.last_step = 0
        self.tokens_seen: float | None = None
        self.reachable = True
        if check and self.zero:
            self._check()

    # -- checks before training --

    def _check(self, runs: Iterable[Mapping[str, Any]] = ()) -> None:
        if not self.reachable:
            return  # said once already; the run is saved at the end if it still cannot be sent
        try:
            self.client.check(self.study, runs, deadline=min(self.client.submit_deadline, 10.0))
        except HpscaleError as error:
            if error.status_code >= 500 or self.check == "warn":
                warnings.warn(f"hpscale: study {self.study!r}: {error}; training goes on", stacklevel=3)
                return
            detail = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in error.details if isinstance(d, dict))
            raise HpscaleError(
                error.status_code,
                error.code,
                f"study {self.study!r} would refuse this run ({error.message}{'; ' + detail if detail else ''}); "
                f"nothing was trained. Pass check='warn' to train anyway.",
                error.details,
            ) from None
        except httpx.HTTPError as error:
            self.reachable = False
            warnings.warn(
                f"hpscale: cannot reach {self.client.url} ({error}); training goes on and the run is saved "
                f"locally if it still cannot be sent at the end",
                stacklevel=3,
            )

    # -- one run --

    def _key(self) -> str | None:
        if self.base_key is None:
            return None
        return self.base_key if not self.runs else f"{self.base_key}-{len(self.runs) + 1}"

    def _begin(self, inferred: Mapping[str, Any], extra: Mapping[str, Any], max_steps: int | None) -> None:
        """Start a run (all ranks compute the same fields, so a missing one stops all of them)."""
        if self.managed and self.run is not None and not self.run.submitted:
            return  # a second train() inside one `with` block continues its run
        if self.run is not None and not self.run.submitted:
            self._end(error="the previous training call ended without finishing (an exception?)")
        fields = dict(inferred)
        for name, value in self.hand.items():
            if name in inferred and inferred[name] is not None and not _agrees(value, inferred[name]):
                warnings.warn(
                    f"hpscale: {name}={value!r} was passed by hand but the framework says {inferred[name]!r}; "
                    f"the hand value is stored",
                    stacklevel=4,
                )
            fields[name] = value
        tokens_per_step = self.hand_tokens_per_step
        if tokens_per_step is None and fields.get("batch_size") and fields.get("seq_len"):
            tokens_per_step = float(fields["batch_size"]) * float(fields["seq_len"])
        self.tokens_per_step = tokens_per_step
        self.max_steps = max_steps
        if "tokens" not in fields and tokens_per_step and max_steps:
            fields["tokens"] = tokens_per_step * max_steps
        missing = [name for name in REQUIRED if fields.get(name) in (None, 0)]
        if missing:
            hints = {
                "tokens": "tokens=, or seq_len= / tokens_per_step= (no token ids were found in the training data)",
                "n_params": "n_params=",
                "learning_rate": "learning_rate=",
                "batch_size": "batch_size= (global, in sequences)",
            }
            raise ValueError(
                f"hpscale: cannot tell {', '.join(missing)} from the framework; pass "
                + "; ".join(hints[name] for name in missing)
            )
        self.eval_loss = self.window_loss = None
        self.train_loss = self.tokens_seen = None
        self.last_step = 0
        run = TrackedRun(self.client, self.study, run_key=self._key(), **{**extra, **self.hand_extra})
        run.fields = {name: value for name, value in fields.items() if name in RUN_FIELDS and value is not None}
        for name in ("width", "depth", "seq_len", "batch_size", "seed"):
            if name in run.fields:
                run.fields[name] = int(run.fields[name])
        run.curve_unit = "tokens" if tokens_per_step else "steps"
        self.run = run
        self.runs.append(run)
        if self.zero:
            _OPEN.add(self)
            _hook_process_exit()
            if self.check:
                try:
                    self._check([{**run.run(), "status": "failed"}])
                except HpscaleError:
                    run.submitted = True  # refused before the first step: nothing to record
                    _OPEN.discard(self)
                    self.runs.pop()
                    raise
                run.status = None  # run() settled it for the check; the end decides

    def _x(self, step: int) -> float:
        """A curve point's x: tokens seen (counted, or steps × tokens per step), else the step."""
        if self.tokens_seen:
            return float(self.tokens_seen)
        return float(step) * self.tokens_per_step if self.tokens_per_step else float(step)

    def _point(self, step: int, loss: float | None) -> None:
        if self.run is None or loss is None:
            return
        self.run.log(self._x(step), loss)  # a non-finite loss marks the run diverged
        self.window_loss = (step, loss)
        self.last_step = max(self.last_step, step)

    def _evaluated(self, step: int, loss: float | None) -> None:
        if loss is None:
            return
        if self.run is not None and self.run.submitted and self.zero:
            warnings.warn(
                "hpscale: this evaluation came after the run was submitted; to submit it as the final loss, "
                "evaluate inside `with callback:` (or callback.train(trainer, evaluate=True))",
                stacklevel=3,
            )
            return
        if not math.isfinite(loss) and self.run is not None:
            self.run.diverged = True
        self.eval_loss = (step, loss)

    def _end(self, *, error: str | None = None, model: Any = None) -> None:
        """Settle the run's status, final loss and tokens, and submit (global zero only)."""
        run = self.run
        _OPEN.discard(self)
        if run is None or run.submitted or not self.zero:
            return
        if error is not None:
            run.status = "failed"
            run.extra.setdefault("error", error[:500])
        elif model is not None and not weights_finite(model):
            run.diverged = True
            run.extra.setdefault("hpscale_note", "non-finite weights at the end of training")
        final = None
        if self.eval_loss is not None and self.eval_loss[0] >= self.last_step:
            final, source = self.eval_loss[1], "eval_loss"
        elif self.window_loss is not None:
            final, source = self.window_loss[1], "mean training loss of the last steps"
        elif self.train_loss is not None:
            final, source = self.train_loss, "train_loss (mean over the run)"
        if final is not None:
            run.final_loss = final
            run.extra.setdefault("final_loss_from", source)
        elif error is None and not run.diverged:
            warnings.warn(
                f"hpscale: run {run.run_key} saw no loss at all (no logged, returned or evaluated loss); "
                f"it is stored as failed",
                stacklevel=3,
            )
        if self.tokens_seen and "tokens" not in self.hand and run.status != "failed":
            run.fields["tokens"] = float(self.tokens_seen)  # what the framework counted
        run.submit()

    # -- `with callback:` and the HF wrapper --

    def __enter__(self) -> _Tracker:
        self.managed = True
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: object) -> None:
        self.managed = False
        if self.run is not None and not self.run.submitted:
            self._end(error=None if kind is None else f"{kind.__name__}: {value}", model=self._model)

    _model: Any = None


class HpscaleTrainerCallback(_Tracker, _HFBase):  # type: ignore[misc, valid-type]
    """A Hugging Face `TrainerCallback` (see the module's doc). `train(trainer)` runs
    `trainer.train()` (and `trainer.evaluate()` with `evaluate=True`) as one run whose
    exception is recorded as `failed` and re-raised."""

    def __init__(self, client: Client, study: str, **fields: Any) -> None:
        _Tracker.__init__(self, client, study, **fields)
        self._force_log: set[int] = set()

    def train(self, trainer: Any, *args: Any, evaluate: bool = False, **kwargs: Any) -> Any:
        with self:
            output = trainer.train(*args, **kwargs)
            if evaluate:
                trainer.evaluate()
        return output

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.zero = bool(getattr(state, "is_world_process_zero", True))
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        self._model = model
        inferred: dict[str, Any] = {"learning_rate": getattr(args, "learning_rate", None)}
        inferred["weight_decay"] = getattr(args, "weight_decay", None)
        inferred.update(optimizer_hparams(optimizer))
        per_device = getattr(args, "train_batch_size", None) or getattr(args, "per_device_train_batch_size", None)
        if per_device:
            world = int(getattr(args, "world_size", 1) or 1)
            inferred["batch_size"] = int(per_device) * int(getattr(args, "gradient_accumulation_steps", 1)) * world
        loader = kwargs.get("train_dataloader")
        inferred["seq_len"] = sequence_length(getattr(loader, "dataset", None))
        extra: dict[str, Any] = {}
        if model is not None:
            count = model.num_parameters() if hasattr(model, "num_parameters") else parameter_count(model)
            inferred["n_params"] = count
            if hasattr(model, "num_parameters"):
                with contextlib.suppress(TypeError, AttributeError):
                    extra["n_params_non_embedding"] = int(model.num_parameters(exclude_embeddings=True))
            inferred.update(shape_from(getattr(model, "config", None)))
        inferred["seed"] = getattr(args, "seed", None)
        max_steps = int(getattr(state, "max_steps", 0) or 0) or None
        if max_steps:
            extra["max_steps"] = max_steps
        schedule = getattr(args, "lr_scheduler_type", None)
        if schedule is not None:
            extra["lr_schedule"] = str(getattr(schedule, "value", schedule))
        if max_steps and hasattr(args, "get_warmup_steps"):
            extra["warmup_steps"] = int(args.get_warmup_steps(max_steps))
        self._begin(inferred, extra, max_steps)
        # Ask the Trainer to log the loss at the last step and ~10% of the steps before it, so
        # the final loss is the mean of the recent steps (its default logs every 500 steps).
        self._force_log = set()
        if max_steps:
            window = max(1, math.ceil(max_steps / 10))
            self._force_log = {step for step in (max_steps - window, max_steps) if step > 0}
        self._counting = getattr(args, "include_num_input_tokens_seen", "no") not in ("no", False, None)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step in self._force_log:
            control.should_log = True

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if not logs or self.run is None:
            return
        if self._counting and getattr(state, "num_input_tokens_seen", 0):
            self.tokens_seen = float(state.num_input_tokens_seen)
        if "grad_norm" in logs and (norm := _number(logs["grad_norm"])) is not None and not math.isfinite(norm):
            self.run.diverged = True  # HF's nan/inf filter hides a NaN loss, not the grad norm
        if "loss" in logs:
            self._point(state.global_step, _number(logs["loss"]))
        if "train_loss" in logs:
            self.train_loss = _number(logs["train_loss"])
            if self.train_loss is not None and not math.isfinite(self.train_loss):
                self.run.diverged = True

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if metrics and "eval_loss" in metrics:
            self._evaluated(state.global_step, _number(metrics["eval_loss"]))

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.last_step = max(self.last_step, int(state.global_step))
        if not self.managed:
            self._end(model=kwargs.get("model"))


class HpscaleLightningCallback(_Tracker, _LightningBase):  # type: ignore[misc, valid-type]
    """A Lightning `Callback` (see the module's doc). The training loss is what
    `training_step` returned (else the logged `loss_key`), averaged on each process and then
    across processes over windows of steps; `val_key`, if logged by a validation at the final
    step, is the final loss; an exception in training records `failed`."""

    def __init__(
        self, client: Client, study: str, *, loss_key: str = "train_loss", val_key: str = "val_loss", **fields: Any
    ) -> None:
        _Tracker.__init__(self, client, study, **fields)
        self.loss_key = loss_key
        self.val_key = val_key
        self._sum: Any = None
        self._count = 0
        self._every = 1
        self._next_flush = 1

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.zero = bool(getattr(trainer, "is_global_zero", True))
        self._model = pl_module
        inferred: dict[str, Any] = {}
        optimizers = getattr(trainer, "optimizers", None) or []
        if optimizers:
            inferred.update(optimizer_hparams(optimizers[0]))
        loader = getattr(trainer, "train_dataloader", None)
        per_device = getattr(loader, "batch_size", None) or getattr(
            getattr(loader, "batch_sampler", None), "batch_size", None
        )
        if per_device:
            accumulate = int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
            inferred["batch_size"] = int(per_device) * accumulate * int(getattr(trainer, "world_size", 1) or 1)
        inferred["seq_len"] = sequence_length(getattr(loader, "dataset", None))
        inferred["n_params"] = parameter_count(pl_module)
        inferred.update(shape_from(getattr(pl_module, "config", None), getattr(pl_module, "hparams", None)))
        seed = os.environ.get("PL_GLOBAL_SEED")
        if seed and seed.lstrip("-").isdigit():
            inferred["seed"] = int(seed)
        max_steps = int(getattr(trainer, "max_steps", -1) or -1)
        if max_steps <= 0:
            estimated = getattr(trainer, "estimated_stepping_batches", None)
            max_steps = int(estimated) if isinstance(estimated, (int, float)) and math.isfinite(estimated) else 0
        extra: dict[str, Any] = {"max_steps": max_steps} if max_steps else {}
        self._begin(inferred, extra, max_steps or None)
        # Windows of steps whose losses are averaged (one cross-process reduction each): the
        # curve's points, and the last window is the final training loss.
        every = int(getattr(trainer, "log_every_n_steps", 50) or 50)
        self._every = max(1, min(every, math.ceil(max_steps / 10))) if max_steps else every
        self._next_flush = int(getattr(trainer, "global_step", 0)) + self._every
        self._sum, self._count = None, 0

    def _step_loss(self, trainer: Any, pl_module: Any, outputs: Any) -> Any:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if loss is not None and hasattr(loss, "detach") and getattr(pl_module, "automatic_optimization", True):
            # automatic optimization hands callbacks the loss divided by the accumulation
            loss = loss * int(getattr(trainer, "accumulate_grad_batches", 1) or 1)
        if loss is None or not hasattr(loss, "detach"):
            metrics = getattr(trainer, "callback_metrics", {}) or {}
            loss = metrics.get(self.loss_key, metrics.get("loss"))
        if loss is None:
            return None
        return loss.detach().float().reshape(()) if hasattr(loss, "detach") else float(loss)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.run is None:
            return
        loss = self._step_loss(trainer, pl_module, outputs)
        if loss is not None:
            self._sum = loss if self._sum is None else self._sum + loss  # stays on the device: no sync
            self._count += 1
        if int(trainer.global_step) >= self._next_flush:
            self._flush(trainer)
            self._next_flush += self._every

    def _flush(self, trainer: Any) -> None:
        """Average the window on each process, then across processes (every rank calls this at
        the same steps, so the collective lines up; a rank that saw no loss adds nothing)."""
        import torch  # Lightning always brings it

        count = self._count
        total = self._sum if self._sum is not None else torch.tensor(0.0)
        total = total if hasattr(total, "detach") else torch.tensor(float(total))
        self._sum, self._count = None, 0
        strategy = trainer.strategy
        total = strategy.reduce(total.reshape(()), reduce_op="sum")  # a NaN anywhere stays NaN
        seen = _number(strategy.reduce(torch.tensor(float(count), device=total.device), reduce_op="sum"))
        if seen:
            self._point(
                int(trainer.global_step), (_number(total) or 0.0) / seen if _number(total) is not None else None
            )

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if getattr(trainer, "sanity_checking", False):
            return
        value = (getattr(trainer, "callback_metrics", {}) or {}).get(self.val_key)
        self._evaluated(int(trainer.global_step), None if value is None else _number(value))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        if self.run is None:
            return
        if self._count:
            self._flush(trainer)
        self.last_step = max(self.last_step, int(trainer.global_step))
        if not self.managed:
            self._end(model=pl_module)

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._end(error=f"{type(exception).__name__}: {exception}")
