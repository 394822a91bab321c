"""Fixtures of the detector's integration tests: a queue whose library runs HOG only
(fast on a CPU), a direct connection for reading the tables, and a library root."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from facescan_queue.repository import Queue
from tests.integration.detector.support import HOG, LIB


@pytest.fixture
async def hog_queue(queue: Queue) -> Queue:
    """The test queue with library "photos" set to a one-step cascade, hog@1.0."""
    await queue.ensure_library(LIB, HOG)
    return queue


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A plain connection to the test database, for reading the truth from the tables."""
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """An empty library root."""
    directory = tmp_path / "library"
    directory.mkdir()
    return directory
