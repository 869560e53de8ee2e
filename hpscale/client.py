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
raises `HpscaleError` carrying the server's error body.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import httpx

MAX_BATCH = 10_000
_RETRY_STATUS = {429, 502, 503, 504}


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
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport)
        self.retries = retries

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        delay = 0.25
        for attempt in range(self.retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TransportError:
                if attempt == self.retries:
                    raise
            else:
                if response.status_code not in _RETRY_STATUS or attempt == self.retries:
                    if response.is_error:
                        raise HpscaleError.from_response(response)
                    if response.headers.get("content-type", "").startswith("application/json"):
                        return response.json()
                    return response.text
            time.sleep(delay * (1 + random.random()))
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

    def submit(self, study: str, runs: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
        """Store runs (in batches of ≤10,000, each atomic); safe to call again after a failure."""
        keyed = [dict(run) if run.get("run_key") else {**run, "run_key": content_run_key(run)} for run in runs]
        total = {"inserted": 0, "duplicates": 0, "ids": []}
        for start in range(0, len(keyed), MAX_BATCH):
            result = self._request(
                "POST", f"/v1/studies/{_segment(study)}/runs", json={"runs": keyed[start : start + MAX_BATCH]}
            )
            total["inserted"] += result["inserted"]
            total["duplicates"] += result["duplicates"]
            total["ids"].extend(result["ids"])
        return total

    def runs(self, study: str, *, page_size: int = 1000, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every run of the study (optionally filtered by status, width, depth, created_by)."""
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

    def recommend(self, study: str, **target: Any) -> dict[str, Any]:
        """Hyperparameters at a target: n_params, tokens, width, depth, batch_size, compute, batch_multiple…"""
        params = {key: value for key, value in target.items() if value is not None}
        return self._request("GET", f"/v1/studies/{_segment(study)}/recommendation", params=params)

    def suggestions(self, study: str, count: int = 5, **target: Any) -> list[dict[str, Any]]:
        params = {"count": count, **{k: v for k, v in target.items() if v is not None}}
        return self._request("GET", f"/v1/studies/{_segment(study)}/suggestions", params=params)["items"]
