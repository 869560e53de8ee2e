"""Python client for training launchers and sweep scripts.

    from hpscale.client import Client
    hp = Client("http://hpscale.internal:8000", token="hps_...")
    hp.submit("gpt-proxies", [{"n_params": 1.2e8, "tokens": 2.4e9, "learning_rate": 3e-3,
                               "batch_size": 256, "final_loss": 3.12}])
    rec = hp.recommend("gpt-proxies", n_params=7e9, tokens=1.4e12, width=4096, depth=32)
    lr = rec["learning_rate"]["value"]

Runs without a `run_key` get one derived from their content, so a retried submission
(after a timeout, a crash, a rerun of the script) never stores a run twice. Transient
failures (connection errors, 429, 502-504) are retried with backoff; any other error
raises `HpscaleError` carrying the server's error body. Every method returns the HTTP
answer's own shape (`submit` adds `submission_ids` for submissions of more than one batch).
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import random
import time
import uuid
import warnings
import weakref
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

# The server's limit on runs per POST (service.limits.MAX_BATCH_RUNS, contract 1.1), copied
# on purpose: the client imports nothing server-side, so it installs and runs without the server.
MAX_BATCH = 10_000
_RETRY_STATUS = {429, 502, 503, 504}
# What the end of a tracked run may spend submitting it, all tries included (seconds).
DEFAULT_SUBMIT_DEADLINE = 30.0


class HpscaleError(Exception):
    """An error answer from the service: HTTP status, machine code, message and details."""

    def __init__(self, status_code: int, code: str, message: str, details: list[Any] | None = None) -> None:
        super().__init__(f"{status_code} {code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details or []

    @classmethod
    def from_response(cls, response: httpx.Response) -> HpscaleError:
        try:
            error = response.json()["error"]
            return cls(response.status_code, error["code"], error["message"], error.get("details"))
        except (ValueError, KeyError, TypeError):
            return cls(response.status_code, "http_error", response.text[:500] or response.reason_phrase)


def content_run_key(run: Mapping[str, Any]) -> str:
    """A stable idempotency key from a run's content (same run → same key)."""
    canonical = json.dumps(run, sort_keys=True, separators=(",", ":"), default=str)
    return "auto-" + hashlib.sha256(canonical.encode()).hexdigest()[:40]


def _segment(name: str) -> str:
    """`name` as one URL path segment: '/', '?', '#' and '%' are escaped and a name of
    dots is written as %2E, so no study name can steer a request to another path."""
    segment = quote(name, safe="")
    return segment.replace(".", "%2E") if set(segment) <= {"."} else segment


class Client:
    """A thin, retrying client of the hpscale HTTP API (contract version 1)."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        *,
        timeout: float = 120.0,
        retries: int = 4,
        transport: httpx.BaseTransport | None = None,
        submit_deadline: float | None = None,
        spool_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        """`submit_deadline`: seconds, all tries included, that the end of a tracked run may
        spend submitting it (default 30, or HPSCALE_SUBMIT_DEADLINE) before it gives up and
        saves the run to `spool_dir` (default ./hpscale-unsent, or HPSCALE_SPOOL_DIR)."""
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url = url.rstrip("/")
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout, transport=transport)
        # A client nobody closed still closes its connections when it goes (no unclosed-socket
        # ResourceWarning at exit from a script that never called close()).
        self._closer = weakref.finalize(self, self._http.close)
        self.timeout = timeout
        self.retries = retries
        if submit_deadline is None:
            submit_deadline = float(os.environ.get("HPSCALE_SUBMIT_DEADLINE") or DEFAULT_SUBMIT_DEADLINE)
        self.submit_deadline = submit_deadline
        self.spool_dir = Path(spool_dir or os.environ.get("HPSCALE_SPOOL_DIR") or "hpscale-unsent")

    def close(self) -> None:
        self._closer()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, *, deadline: float | None = None, **kwargs: Any) -> Any:
        """One call, retried on transient failures; `deadline` (seconds) bounds all tries
        together, each try's timeout included, so a server that accepts connections but never
        answers cannot hold the caller longer than that."""
        delay = 0.25
        end = None if deadline is None else time.monotonic() + deadline
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            if end is not None:
                left = end - time.monotonic()
                if left <= 0:
                    raise httpx.TimeoutException(f"no answer within the {deadline:g} s deadline")
                kwargs["timeout"] = min(self.timeout, left)
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if last or (end is not None and time.monotonic() >= end):
                    raise
            else:
                if response.status_code not in _RETRY_STATUS or last:
                    if response.is_error:
                        raise HpscaleError.from_response(response)
                    if response.headers.get("content-type", "").startswith("application/json"):
                        return response.json()
                    return response.text
            pause = delay * (1 + random.random())
            if end is not None:
                pause = min(pause, max(0.0, end - time.monotonic()))
            time.sleep(pause)
            delay = min(delay * 2, 8.0)
        raise AssertionError("unreachable")

    # --- studies and runs ------------------------------------------------------------

    def create_study(self, name: str, *, exist_ok: bool = False, **fields: Any) -> dict[str, Any]:
        """Create a study (admin token). With exist_ok, an existing study is returned instead."""
        try:
            return self._request("POST", "/v1/studies", json={"name": name, **fields})
        except HpscaleError as error:
            if exist_ok and error.status_code == 409:
                return self.study(name)
            raise

    def studies(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/studies")["items"]

    def study(self, name: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/studies/{_segment(name)}")

    def check(self, study: str, runs: Iterable[Mapping[str, Any]] = (), *, deadline: float | None = 30.0) -> None:
        """Raise `HpscaleError` now if submitting `runs` to `study` later would be refused:
        the study exists, the token is accepted and may write, and each run passes the
        server's own validation (`POST .../runs?dry_run=true`: nothing is stored)."""
        self._request("GET", f"/v1/studies/{_segment(study)}", deadline=deadline)
        batch = list(runs)
        if batch:
            self._request(
                "POST",
                f"/v1/studies/{_segment(study)}/runs",
                params={"dry_run": "true"},
                json={"runs": batch},
                deadline=deadline,
            )

    def submit(self, study: str, runs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Store runs (in batches of ≤10,000, each atomic); safe to call again after a failure.

        The answer is the HTTP answer's shape (`inserted`, `duplicates`, `replaced`, `ids`,
        `submission_id`), summed over batches; `submission_id` undoes it (`delete_submission`).
        More than 10,000 runs are several submissions: `submission_id` is the first's and
        `submission_ids` lists them all (also for one batch: the name earlier versions returned)."""
        keyed = [dict(run) if run.get("run_key") else {**run, "run_key": content_run_key(run)} for run in runs]
        total: dict[str, Any] = {
            "inserted": 0,
            "duplicates": 0,
            "replaced": 0,
            "ids": [],
            "submission_id": None,
            "submission_ids": [],
        }
        for start in range(0, len(keyed), MAX_BATCH):
            result = self._request(
                "POST", f"/v1/studies/{_segment(study)}/runs", json={"runs": keyed[start : start + MAX_BATCH]}
            )
            total["inserted"] += result["inserted"]
            total["duplicates"] += result["duplicates"]
            total["replaced"] += result.get("replaced", 0)
            total["ids"].extend(result["ids"])
            total["submission_ids"].append(result.get("submission_id"))
            if total["submission_id"] is None:
                total["submission_id"] = result.get("submission_id")
        return total

    def runs(self, study: str, *, page_size: int = 1000, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every run of the study (optionally filtered by status, width, depth, created_by, excluded,
        `state` in the latest fit, and sorted: sort=column, order="desc"), each with its `fit_state`."""
        params: dict[str, Any] = {"limit": page_size, **filters}
        while True:
            page = self._request("GET", f"/v1/studies/{_segment(study)}/runs", params=params)
            yield from page["items"]
            if not page["next_cursor"]:
                return
            params["cursor"] = page["next_cursor"]

    # --- fits and recommendations ----------------------------------------------------

    def fit(self, study: str, *, bootstrap: int | None = None) -> dict[str, Any]:
        body = {} if bootstrap is None else {"bootstrap": bootstrap}
        return self._request("POST", f"/v1/studies/{_segment(study)}/fits", json=body)

    def latest_fit(self, study: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/studies/{_segment(study)}/fits/latest")

    def recommend(self, study: str, *, fit_id: int | None = None, **target: Any) -> dict[str, Any]:
        """Hyperparameters at a target: n_params, tokens, width, depth, batch_size, compute, batch_multiple…

        `fit_id` (the `fit_id` of an earlier answer) pins the answer to that fit: a launcher
        restarted later gets exactly the answer it launched with, whatever runs arrived since."""
        params = {key: value for key, value in {**target, "fit_id": fit_id}.items() if value is not None}
        return self._request("GET", f"/v1/studies/{_segment(study)}/recommendation", params=params)

    def run(self, study: str, run_id: int) -> dict[str, Any]:
        """One run with its curves, its state in the latest fit and why, its submission and audit trail."""
        return self._request("GET", f"/v1/studies/{_segment(study)}/runs/{int(run_id)}")

    def suggestions(self, study: str, count: int = 5, **target: Any) -> ItemsAnswer:
        """The HTTP answer `{"items": [...], "fit_id", "data_version", "warnings"}`. (Earlier versions returned
        the list of items; iterating or indexing the answer by position still gives the items,
        with a DeprecationWarning: use answer["items"].)"""
        params = {"count": count, **{k: v for k, v in target.items() if v is not None}}
        return ItemsAnswer(self._request("GET", f"/v1/studies/{_segment(study)}/suggestions", params=params))

    def suggest(self, study: str, **query: Any) -> dict[str, Any]:
        """The whole `/suggestions` answer: target (n_params, tokens, width, depth), `count`, and for a
        budget plan `budget_flops` (with `max_n_params`, `max_tokens`): items with their runs, and `budget`."""
        params = {k: v for k, v in query.items() if v is not None}
        return self._request("GET", f"/v1/studies/{_segment(study)}/suggestions", params=params)

    def transfer_check(self, study: str, **query: Any) -> dict[str, Any]:
        """Does the study's transfer work: per width/depth and law, the drift exponent, verdict and hints;
        with a target (n_params, tokens, width, depth), the cost of reusing the base model's optimum."""
        params = {k: v for k, v in query.items() if v is not None}
        return self._request("GET", f"/v1/studies/{_segment(study)}/transfer-check", params=params)

    # --- exclusion and undo (contract 1.1) ------------------------------------------------

    def exclude(self, study: str, run_id: int, reason: str) -> dict[str, Any]:
        """Leave a run out of every fit (it stays stored and listed); `reason` is audited."""
        return self._request("POST", f"/v1/studies/{_segment(study)}/runs/{run_id}/exclude", json={"reason": reason})

    def include(self, study: str, run_id: int) -> dict[str, Any]:
        return self._request("POST", f"/v1/studies/{_segment(study)}/runs/{run_id}/include", json={})

    def delete_submission(self, study: str, submission_id: int) -> int:
        """Undo a submission (admin token): delete the runs it stored; how many."""
        return self._request("DELETE", f"/v1/studies/{_segment(study)}/submissions/{submission_id}")["deleted"]

    def delete_study(self, study: str) -> None:
        """Delete a study with its runs and fits (admin token)."""
        self._request("DELETE", f"/v1/studies/{_segment(study)}")

    # --- the training-loop hook ------------------------------------------------------------

    def track(self, study: str, *, run_key: str | None = None, check: bool | str = True, **fields: Any) -> TrackedRun:
        """A context manager that submits one run when the training loop ends:

            with hp.track("gpt-proxies", n_params=1.2e8, tokens=2.4e9, learning_rate=3e-3,
                          batch_size=256, width=768, depth=12) as run:
                for step in ...:
                    ...
                    run.log(tokens_seen, loss)      # optional: the loss curve
                run.final_loss = eval_loss

        On leaving the block the run is submitted: `completed` with `final_loss` (or the
        curve's last loss), `diverged` if a loss was NaN/inf, `failed` if the block raised
        (the exception still propagates) or no loss was given. Fields that are not run
        fields go into `extra`, but a near-miss of a run field (`learnig_rate`) is a
        TypeError at once. `run_key` defaults to a fresh id, so retries of the submission
        never store the run twice; pass your job id to make a requeued job's retry
        replace its failed first attempt (the server keeps a completed run, never two).
        The submission is bounded by the client's `submit_deadline`; past it the run is
        saved to a JSON file for `hpscale submit`.

        Entering the block checks, before any training, that the study exists, the token may
        write, and the server accepts the fields given (`POST …/runs?dry_run=true`): a refusal
        raises `HpscaleError` there (`check="warn"` warns instead, `check=False` skips it); a
        server that cannot be reached only warns (the run is saved at the end if it still
        cannot be sent).
        """
        return TrackedRun(self, study, run_key=run_key, check=check, **fields)


class ItemsAnswer(dict):  # type: ignore[type-arg]
    """An HTTP answer `{"items": [...], ...}` that old code may still use as the list of items:
    iterating it, `len()` and integer indexing reach `items`, with a DeprecationWarning."""

    def _items(self) -> list[Any]:
        warnings.warn(
            'hpscale: this answer is the HTTP shape {"items": [...], ...} now; use answer["items"]',
            DeprecationWarning,
            stacklevel=3,
        )
        return list(dict.__getitem__(self, "items"))

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        return iter(self._items())

    def __len__(self) -> int:
        return len(self._items())

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, (int, slice)):
            return self._items()[key]
        return dict.__getitem__(self, key)


RUN_FIELDS = frozenset(
    {"n_params", "tokens", "width", "depth", "seq_len", "learning_rate", "batch_size", "weight_decay", "seed"}
)


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def near_miss(name: str) -> str | None:
    """The run field `name` is probably a misspelling of, if any (`learnig_rate`)."""
    if name in RUN_FIELDS:
        return None
    close = difflib.get_close_matches(name, sorted(RUN_FIELDS | {"final_loss", "run_key"}), n=1, cutoff=0.85)
    return close[0] if close else None


def split_fields(fields: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(run fields, extra) of keyword arguments; a near-miss of a run field is a TypeError."""
    for name in fields:
        if (meant := near_miss(name)) is not None:
            raise TypeError(
                f"hpscale: unknown field {name!r} (did you mean {meant!r}?); names that are not run fields go "
                f"into extra, so a misspelt one would be lost: pass extra fields under names unlike run fields"
            )
    return (
        {k: v for k, v in fields.items() if k in RUN_FIELDS},
        {k: v for k, v in fields.items() if k not in RUN_FIELDS},
    )


class TrackedRun:
    """One training run being tracked by `Client.track` (see there)."""

    def __init__(
        self, client: Client, study: str, *, run_key: str | None = None, check: bool | str = False, **fields: Any
    ) -> None:
        self.client = client
        self.study = study
        self.check = check
        self.run_key = run_key or f"track-{uuid.uuid4().hex}"
        self.fields, self.extra = split_fields(fields)
        self.final_loss: float | None = None
        self.loss_curve: list[list[float]] = []
        # "tokens" (the contract's unit) or "steps" when tokens per step are unknown; a
        # curve in steps says so in extra["loss_curve_x"].
        self.curve_unit = "tokens"
        self.diverged = False
        self.status: str | None = None
        self.result: dict[str, Any] | None = None  # the server's answer once submitted
        self.error: Exception | None = None  # why the submission failed, if it did
        self.saved_to: Path | None = None  # where the run was saved when it could not be submitted
        self.submitted = False

    def log(self, tokens: float, loss: float) -> None:
        """One point of the loss curve (tokens seen, loss); a NaN/inf loss marks divergence."""
        if not _finite(loss):
            self.diverged = True
            return
        self.loss_curve.append([float(tokens), float(loss)])

    def run(self) -> dict[str, Any]:
        """The run object as it will be (or was) submitted."""
        loss = self.final_loss
        if loss is None and self.loss_curve:
            loss = self.loss_curve[-1][1]
        if self.status is None:
            self.status = "completed"
        if self.status == "completed" and (self.diverged or (loss is not None and not _finite(loss))):
            self.status = "diverged"
        if self.status == "completed" and loss is None:
            self.status = "failed"
            self.extra.setdefault("hpscale_note", "no final_loss was given")
        run: dict[str, Any] = {**self.fields, "run_key": self.run_key, "status": self.status}
        if self.status == "completed":
            run["final_loss"] = float(loss)  # type: ignore[arg-type]
        if self.loss_curve:
            run["loss_curve"] = self.loss_curve
            if self.curve_unit != "tokens":
                self.extra["loss_curve_x"] = self.curve_unit
        extra = {k: v for k, v in self.extra.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if extra:
            run["extra"] = extra
        return run

    def submit(self) -> dict[str, Any] | None:
        """Submit now (done for you on leaving the `with` block; a second call does nothing).

        A failure to reach the server within the client's `submit_deadline` does not mask
        the training's own outcome: the run is saved as JSON under the client's `spool_dir`
        and a warning says how to resubmit it (`hpscale submit FILE`)."""
        if self.submitted:
            return self.result
        self.submitted = True
        run = self.run()
        try:
            self.result = self.client._request(
                "POST", f"/v1/studies/{_segment(self.study)}/runs", json=run, deadline=self.client.submit_deadline
            )
        except (HpscaleError, httpx.HTTPError) as error:
            self.error = error
            self.saved_to = self._save(run)
            where = f"saved to {self.saved_to}" if self.saved_to else f"run = {json.dumps(run)}"
            warnings.warn(
                f"hpscale: run {self.run_key} was not submitted to study {self.study!r} ({error}); {where}; "
                f"resubmit it with `HPSCALE_TOKEN=... hpscale submit {self.saved_to or 'RUN.json'} "
                f"--url {self.client.url}` (or Client.submit)",
                stacklevel=3,
            )
        return self.result

    def _save(self, run: dict[str, Any]) -> Path | None:
        """The run as `{"study", "runs"}` JSON under the spool directory (None if unwritable)."""
        try:
            self.client.spool_dir.mkdir(parents=True, exist_ok=True)
            name = "".join(c if c.isalnum() or c in "-_." else "_" for c in f"{self.study}--{self.run_key}")
            path = self.client.spool_dir / f"{name[:200]}.json"
            path.write_text(json.dumps({"study": self.study, "runs": [run]}, indent=1))
            return path
        except OSError:
            return None

    def __enter__(self) -> TrackedRun:
        if self.check:
            self.validate()
        return self

    def validate(self) -> None:
        """Ask the server now whether it would take this run (see `Client.track`)."""
        # No loss yet: a failed run needs none. Nothing of this object changes.
        probe: dict[str, Any] = {**self.fields, "run_key": self.run_key, "status": "failed"}
        extra = {k: v for k, v in self.extra.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
        if extra:
            probe["extra"] = extra
        try:
            self.client.check(self.study, [probe], deadline=min(self.client.submit_deadline, 10.0))
        except HpscaleError as error:
            if error.status_code >= 500 or self.check == "warn":
                warnings.warn(f"hpscale: study {self.study!r}: {error}; training goes on", stacklevel=3)
                return
            detail = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in error.details if isinstance(d, dict))
            raise HpscaleError(
                error.status_code,
                error.code,
                f"study {self.study!r} would refuse this run ({error.message}{'; ' + detail if detail else ''}); "
                "nothing was trained. Pass check='warn' to train anyway.",
                error.details,
            ) from None
        except httpx.HTTPError as error:
            warnings.warn(
                f"hpscale: cannot reach {self.client.url} ({error}); training goes on and the run is saved "
                "locally if it still cannot be sent at the end",
                stacklevel=3,
            )

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is not None:
            self.status = "failed"
            self.extra.setdefault("error", f"{exc_type.__name__}: {exc}"[:500])
        self.submit()
