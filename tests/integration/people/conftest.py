"""Fixtures of the people's integration tests: the people of the test database (through
the test queue's pool) and a plain connection for reading the truth."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from facescan_people.repository import PeopleDb
from facescan_queue.repository import Queue


@pytest.fixture
def people(queue: Queue) -> PeopleDb:
    """The people's tables of the test database (library "photos" exists)."""
    return PeopleDb(queue)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database, for reading the truth from the tables."""
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()
