"""Service settings, read from the environment so every worker process sees the same ones.

`hpscale serve` turns its flags into these variables before uvicorn starts the workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from store.db import DEFAULT_DATABASE_URL


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


@dataclass(frozen=True)
class Settings:
    database_url: str = DEFAULT_DATABASE_URL
    auth_enabled: bool = True
    # A request body larger than this is refused with 413 before it is parsed.
    max_body_bytes: int = 64 * 1024 * 1024
    max_batch_runs: int = 10_000
    default_bootstrap: int = 200

    @classmethod
    def from_env(cls) -> Settings:
        env = os.environ
        return cls(
            database_url=env.get("HPSCALE_DATABASE_URL") or DEFAULT_DATABASE_URL,
            auth_enabled=not _flag(env.get("HPSCALE_NO_AUTH")),
            max_body_bytes=int(env.get("HPSCALE_MAX_BODY_BYTES") or cls.max_body_bytes),
            default_bootstrap=int(env.get("HPSCALE_BOOTSTRAP") or cls.default_bootstrap),
        )
