"""Fixtures of the queue's integration tests: a direct connection for checks in SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database, for reading and nudging the tables."""
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture
def admin_dsn(pg_server: object) -> str:
    """The DSN of the server's maintenance database (superuser)."""
    return pg_server.get_uri(database="postgres")  # type: ignore[attr-defined, no-any-return]
