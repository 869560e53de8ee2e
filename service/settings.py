"""Settings: every `HPSCALE_*` variable, read once and validated at start (pydantic-settings).

`hpscale serve` validates them before it starts any worker and turns its own flags into
these variables, so every worker process builds the same `Settings`; `create_app` takes
one object and passes it down. The README's "Configuration" table lists them all.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.entropy import estimated_entropy_bits
from service.limits import MAX_BOOTSTRAP

DEFAULT_DATABASE_URL = "sqlite:///./hpscale.db"
DEFAULT_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
# An operator-chosen secret (the bootstrap admin token, the metrics token) must be as strong
# as the ones `hpscale tokens create` makes: 32 random bytes are 43 URL-safe base64
# characters (`python -c "import secrets; print(secrets.token_urlsafe(32))"`) and ~256 bits.
# Length is checked, and an entropy estimate (service.entropy: alphabet, runs, repeats) that
# refuses '0123456789abcdef…', 'aaaa…' or a repeated word.
MIN_SECRET_LENGTH = 43
MIN_SECRET_BITS = 128.0


def check_secret(token: str, what: str = "the bootstrap admin token") -> str:
    """`token` if it is long and random enough to be a secret; ValueError (never echoing it) otherwise."""
    if len(token) < MIN_SECRET_LENGTH or estimated_entropy_bits(token) < MIN_SECRET_BITS:
        raise ValueError(
            f"{what} must be a random secret of at least {MIN_SECRET_LENGTH} characters "
            f"(32 random bytes, ≥ {MIN_SECRET_BITS:.0f} bits estimated), "
            "e.g. from: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return token


def _read_secret_file(name: Any, what: str) -> str:
    path = Path(name)
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ValueError(f"cannot read the {what} file {path}: {error.strerror}") from None


def parse_trusted_proxies(value: str) -> list[str]:
    """`--forwarded-allow-ips`: comma-separated addresses or networks (CIDR), or `*` for any peer."""
    items = [item.strip() for item in value.split(",") if item.strip()]
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ValueError(f"not an IP address or network: {item!r}") from None
    return items


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
    # `hpscale serve`'s connection limits (app/server.py, in the server process): idle or
    # trickling clients are closed and cannot starve others of connections or file descriptors.
    timeout_keep_alive: Annotated[int, Field(gt=0, le=3600, description="idle keep-alive seconds")] = 5
    # Seconds from a connection's start (or a keep-alive request's first byte) to its complete head.
    header_timeout: Annotated[float, Field(gt=0, le=3600)] = 5.0
    # Seconds from a complete head to the complete body, plus one second per `body_min_rate`
    # bytes received: a large upload at a steady rate is never cut, a trickle is.
    body_timeout: Annotated[float, Field(gt=0, le=3600)] = 10.0
    body_min_rate: Annotated[int, Field(gt=0)] = 64 * 1024
    # Open connections per worker: past it, a new one closes the oldest idle one (no request
    # in progress), or is refused if none is idle. Also capped below the open-file limit.
    max_connections: Annotated[int, Field(gt=0)] = 4096
    # Open connections per client address (IPv6: its /64); past it, a new one closes that
    # address's oldest idle one. Addresses in `forwarded_allow_ips` (proxies) are exempt.
    max_connections_per_client: Annotated[int, Field(gt=0)] = 64
    # Requests in progress per worker (not connections): past it, 503 + Retry-After at once.
    limit_concurrency: Annotated[int, Field(gt=0, description="requests in progress per worker before 503")] = 512
    # Bytes of a request line + headers; a longer head gets 431 whichever way TCP split it.
    # 64 KiB: room for the longest URL common clients send (httpx refuses over 64 KB).
    h11_max_incomplete_event_size: Annotated[int, Field(gt=0, description="request line + headers bytes")] = 65536
    # Proxies whose X-Forwarded-For / X-Forwarded-Proto are believed (comma-separated addresses
    # or networks, `*` for any); unset: none, the TCP peer is the client.
    forwarded_allow_ips: str | None = None
    # Registered as admin token `bootstrap-admin` at start (a container's first admin).
    bootstrap_admin_token: SecretStr | None = None
    # The same read from a file (a Docker/Kubernetes secret), so it is in no environment.
    bootstrap_admin_token_file: Path | None = None
    # When set, GET /metrics answers only `Authorization: Bearer <metrics_token>`.
    metrics_token: SecretStr | None = None
    # The same read from a file, so it is in no environment or process list.
    metrics_token_file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _tokens_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for name, what in (("bootstrap_admin_token", "bootstrap admin token"), ("metrics_token", "metrics token")):
            if data.get(f"{name}_file") and not data.get(name):
                data = {**data, name: _read_secret_file(data[f"{name}_file"], what)}
        return data

    @field_validator("bootstrap_admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret(value.get_secret_value())
        return value

    @field_validator("metrics_token")
    @classmethod
    def _strong_metrics_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            check_secret(value.get_secret_value(), "the metrics token")
        return value

    @field_validator("forwarded_allow_ips")
    @classmethod
    def _trusted_proxies(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        return ",".join(parse_trusted_proxies(value))

    @property
    def auth_enabled(self) -> bool:
        return not self.no_auth


class ClientSettings(BaseSettings):
    """Where `hpscale recommend` asks: `HPSCALE_URL` and `HPSCALE_TOKEN`."""

    model_config = SettingsConfigDict(env_prefix="HPSCALE_", env_ignore_empty=True, extra="ignore")

    url: str = DEFAULT_URL
    token: SecretStr | None = None
