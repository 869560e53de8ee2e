"""Training-loop hooks for Hugging Face `Trainer` and PyTorch Lightning, on `Client.track`.

    from hpscale.callbacks import HpscaleTrainerCallback      # Hugging Face transformers
    trainer = Trainer(..., callbacks=[HpscaleTrainerCallback(hp, "gpt-proxies",
                                      n_params=1.2e8, tokens=2.4e9, learning_rate=3e-3, batch_size=256)])

    from hpscale.callbacks import HpscaleLightningCallback    # lightning / pytorch_lightning
    trainer = L.Trainer(callbacks=[HpscaleLightningCallback(hp, "gpt-proxies", ...)])

Both are written against the libraries' public callback interfaces (HF: `on_log`,
`on_evaluate`, `on_train_end`; Lightning: `on_train_batch_end`, `on_validation_end`,
`on_train_end`, `on_exception`) and subclass the library's base class when it is installed,
so neither library is a dependency of hpscale. The run is submitted once, at the end of
training (or at an exception: `failed`); a NaN/inf loss makes it `diverged`.

Tokens per logged step: HF's `state.num_input_tokens_seen` when the Trainer counts them
(`include_num_input_tokens_seen=True`), else `tokens_per_step × step` if given.
"""

from __future__ import annotations

from typing import Any

from hpscale.client import Client, TrackedRun

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


class _Tracking:
    """What both callbacks share: one `TrackedRun`, points of the loss curve, one submission."""

    def __init__(
        self,
        client: Client,
        study: str,
        *,
        tokens_per_step: float | None = None,
        run_key: str | None = None,
        **fields: Any,
    ) -> None:
        self.run: TrackedRun = client.track(study, run_key=run_key, **fields)
        self.tokens_per_step = tokens_per_step
        self._done = False

    def _tokens(self, step: int, seen: Any = None) -> float:
        if seen:
            return float(seen)
        return float(step) * (self.tokens_per_step or 1.0)

    def _finish(self, error: BaseException | None = None) -> None:
        if self._done:
            return
        self._done = True
        if error is not None:
            self.run.status = "failed"
            self.run.extra.setdefault("error", f"{type(error).__name__}: {error}"[:500])
        self.run.submit()


class HpscaleTrainerCallback(_Tracking, _HFBase):  # type: ignore[misc, valid-type]
    """A Hugging Face `TrainerCallback`: training losses become the curve; the last
    evaluation loss (`eval_loss`), else the last training loss, is the final loss."""

    def __init__(self, client: Client, study: str, **fields: Any) -> None:
        _Tracking.__init__(self, client, study, **fields)

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.run.log(self._tokens(state.global_step, getattr(state, "num_input_tokens_seen", None)), logs["loss"])

    def on_evaluate(
        self, args: Any, state: Any, control: Any, metrics: dict[str, float] | None = None, **kwargs: Any
    ) -> None:
        if metrics and "eval_loss" in metrics:
            self.run.final_loss = metrics["eval_loss"]

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._finish()


class HpscaleLightningCallback(_Tracking, _LightningBase):  # type: ignore[misc, valid-type]
    """A Lightning `Callback`: `trainer.callback_metrics[loss_key]` after each training batch
    is the curve; `val_key` after validation (if logged), else the last training loss, is the
    final loss; an exception in training records `failed`."""

    def __init__(
        self, client: Client, study: str, *, loss_key: str = "train_loss", val_key: str = "val_loss", **fields: Any
    ) -> None:
        _Tracking.__init__(self, client, study, **fields)
        self.loss_key = loss_key
        self.val_key = val_key

    @staticmethod
    def _metric(trainer: Any, key: str) -> float | None:
        value = getattr(trainer, "callback_metrics", {}).get(key)
        return None if value is None else float(value)

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        loss = self._metric(trainer, self.loss_key)
        if loss is not None:
            self.run.log(self._tokens(trainer.global_step), loss)

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        loss = self._metric(trainer, self.val_key)
        if loss is not None:
            self.run.final_loss = loss

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._finish(exception)
