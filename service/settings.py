"""Settings: every `HPSCALE_*` variable, read once and validated at start (pydantic-settings).

`hpscale serve` validates them before it starts any worker and turns its own flags into
these variables, so every worker process builds the same `Settings`; `create_app` takes
one object and passes it down. The README's "Configuration" table lists them all.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.limits import MAX_BOOTSTRAP

DEFAULT_DATABASE_URL = "sqlite:///./hpscale.db"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# A bootstrap admin token must be as strong as the ones `hpscale tokens create` makes:
# 32 random bytes are 43 URL-safe base64 characters (`python -c "import secrets;
# print(secrets.token_urlsafe(32))"`). Length is checked, plus a floor on distinct
# characters that refuses 'aaaa…' or a repeated word.
MIN_BOOTSTRAP_TOKEN_LENGTH = 43
MIN_BOOTSTRAP_TOKEN_DISTINCT = 16


def check_bootstrap_token(token: str) -> str:
    """`token` if it is long and varied enough to be a random secret; ValueError otherwise."""
    if len(token) < MIN_BOOTSTRAP_TOKEN_LENGTH or len(set(token)) < MIN_BOOTSTRAP_TOKEN_DISTINCT:
        raise ValueError(
            f"the bootstrap admin token must be a random secret of at least {MIN_BOOTSTRAP_TOKEN_LENGTH} characters "
            "(32 random bytes), e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


class Settings(BaseSettings):
    """The server's settings (`HPSCALE_<FIELD>`); keyword arguments override the environment."""

    model_config = SettingsConfigDict(env_prefix="HPSCALE_", env_ignore_empty=True, extra="ignore", frozen=True)

    database_url: Annotated[str, Field(min_length=1, description="SQLAlchemy URL")] = DEFAULT_DATABASE_URL
    no_auth: Annotated[bool, Field(description="every request has admin scope (loopback only)")] = False
    # A request body larger than this is refused with 413 before it is parsed. Sized to the
    # largest legitimate request: a batch of 10,000 runs (the batch limit), each with a
    # 200-point loss curve and a few extra keys, is ~57 MiB of JSON. Only an authenticated
    # writer gets this far (app.security checks the token before reading any body).
    max_body_bytes: Annotated[int, Field(gt=0)] = DEFAULT_MAX_BODY_BYTES
    # Bootstrap resamples of an on-demand fit (POST .../fits may ask for another count).
    bootstrap: Annotated[int, Field(ge=0, le=MAX_BOOTSTRAP)] = 200
    # How long a request waits for a fit (a study's first, fresh=true, POST .../fits) before 503.
    fit_wait_seconds: Annotated[float, Field(gt=0, le=3600)] = 60.0
    # A fit still running this long after it started is stopped (its process killed) and
    # recorded as failed, so a hung fit cannot hold a study's refits forever.
    max_fit_seconds: Annotated[float, Field(gt=0, le=86400)] = 600.0
    # `hpscale serve`'s connection limits (uvicorn): slow or idle clients cannot exhaust the process.
    timeout_keep_alive: Annotated[int, Field(gt=0, le=3600, description="idle keep-alive seconds")] = 5
    limit_concurrency: Annotated[int, Field(gt=0, description="connections per worker before 503")] = 512
    h11_max_incomplete_event_size: Annotated[int, Field(gt=0, description="request line + headers bytes")] = 16384
    # Registered as admin token `bootstrap-admin` at start (a container's first admin).
    bootstrap_admin_token: SecretStr | None = None
    # The same read from a file (a Docker/Kubernetes secret), so it is in no environment.
    bootstrap_admin_token_file: Path | None = None
    # When set, GET /metrics answers only `Authorization: Bearer <metrics_token>`.
    metrics_token: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _token_from_file(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("bootstrap_admin_token_file") and not data.get("bootstrap_admin_token"):
            path = Path(data["bootstrap_admin_token_file"])
            try:
                data = {**data, "bootstrap_admin_token": path.read_text(encoding="utf-8").strip()}
            except OSError as error:
                raise ValueError(f"cannot read the bootstrap admin token file {path}: {error.strerror}") from None
        return data

    @field_validator("bootstrap_admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_bootstrap_token(value.get_secret_value())
        return value

    @property
    def auth_enabled(self) -> bool:
        return not self.no_auth


class ClientSettings(BaseSettings):
    """Where `hpscale recommend` asks: `HPSCALE_URL` and `HPSCALE_TOKEN`."""

    model_config = SettingsConfigDict(env_prefix="HPSCALE_", env_ignore_empty=True, extra="ignore")

    url: str = DEFAULT_URL
    token: SecretStr | None = None
