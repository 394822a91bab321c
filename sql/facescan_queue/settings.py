"""Database settings, read from the environment (FACESCAN_*) by every part of facescan.

There is no default password anywhere: without FACESCAN_DSN the standard libpq variables
(PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE) apply, as for psql.
"""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class DatabaseSettings(BaseSettings):
    """Where the queue lives and how to talk to it."""

    model_config = SettingsConfigDict(env_prefix="FACESCAN_", extra="ignore")

    dsn: SecretStr | None = None
    """PostgreSQL URL, e.g. postgresql://facescan@db:5432/photos (FACESCAN_DSN). Kept
    secret: never printed. Without it, the PG* environment variables apply."""

    connect_timeout_s: float = Field(default=10.0, gt=0)
    """Seconds to wait for a connection before the database counts as unavailable."""

    command_timeout_s: float = Field(default=120.0, gt=0)
    """Seconds any one queue call may take."""

    def dsn_value(self) -> str | None:
        """The DSN itself, for the driver only."""
        return self.dsn.get_secret_value() if self.dsn else None

    def target(self) -> str:
        """Where we connect, for messages: host:port/database, never the password."""
        host, port, database, _ = _parts(self.dsn_value())
        return f"{host}:{port}/{database}"

    def user(self) -> str:
        """The database user we connect as, for messages and GRANT advice."""
        return _parts(self.dsn_value())[3]


def _parts(dsn: str | None) -> tuple[str, str, str, str]:
    env = os.environ
    host = env.get("PGHOST", "localhost")
    port = env.get("PGPORT", "5432")
    user = env.get("PGUSER") or env.get("USER", "postgres")
    database = env.get("PGDATABASE", user)
    if dsn:
        parts = urlsplit(dsn)
        query = parse_qs(parts.query)
        host = parts.hostname or query.get("host", [host])[0]
        port = str(parts.port or query.get("port", [port])[0])
        user = parts.username or query.get("user", [user])[0]
        database = parts.path.lstrip("/") or query.get("dbname", [user])[0]
    return host, port, database, user
