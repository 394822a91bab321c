"""The admin's steps on a database: migrating it to this facescan's schema (numbered
migrations, then the functions) and granting roles libraries.

Called by `facescan db migrate` and `facescan db grant` (an admin, or the chart's hook
Job), and by `facescan scan` on the embedded database it owns; never by the operator or
a detector, whose roles need not own the schema. Migrating is safe to run concurrently
(an advisory lock serialises migrators) and repeatedly (it applies only what is missing).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import asyncpg

from facescan_queue import errors
from facescan_queue.queries import functions_sql, latest_version, migrations, query
from facescan_queue.settings import DatabaseSettings

# The older worker's table, as its users have it.
LEGACY_COLUMNS = (
    "id",
    "image_path",
    "retry_count",
    "last_error",
    "last_error_type",
    "original_width",
    "original_height",
    "file_size_bytes",
    "last_attempted_scale",
    "first_failure_at",
    "last_failure_at",
    "next_retry_after",
    "permanently_failed",
)


@dataclass(frozen=True)
class MigrationReport:
    """What migrate did."""

    from_version: int
    to_version: int
    applied: tuple[str, ...]
    notes: tuple[str, ...] = field(default=())


async def migrate(settings: DatabaseSettings | None = None) -> MigrationReport:
    """Connects with the given settings and migrates."""
    settings = settings or DatabaseSettings()
    target, user = settings.target(), settings.user()
    with errors.translated(target=target, user=user):
        conn = await asyncpg.connect(settings.dsn_value(), timeout=settings.connect_timeout_s)
    try:
        return await migrate_connection(conn, target=target, user=user)
    finally:
        await conn.close()


async def migrate_if_owner(settings: DatabaseSettings) -> MigrationReport | None:
    """migrate(), when the settings' role owns the schema or none exists yet (the
    one-machine commands on the user's own database); None, leaving the schema as it
    is, for a role granted libraries (the admin migrates)."""
    target, user = settings.target(), settings.user()
    with errors.translated(target=target, user=user):
        conn = await asyncpg.connect(settings.dsn_value(), timeout=settings.connect_timeout_s)
    try:
        with errors.translated(target=target, user=user):
            if not await conn.fetchval(query("may_migrate")):
                return None
        return await migrate_connection(conn, target=target, user=user)
    finally:
        await conn.close()


async def migrate_connection(
    conn: asyncpg.Connection, *, target: str, user: str
) -> MigrationReport:
    """Applies the missing migrations and re-applies the functions, in one transaction."""
    with errors.translated(target=target, user=user):
        async with conn.transaction():
            await conn.execute(query("migration_lock"))
            await _check_vector(conn, target)
            current = await _current_version(conn)
            if current > latest_version():
                raise errors.SchemaError(
                    f"the facescan schema on {target} is at version {current}, newer than "
                    f"this facescan understands ({latest_version()}): upgrade facescan"
                )
            owner = await conn.fetchval(query("schema_owner"))
            database = await conn.fetchval(query("current_database"))
            applied = []
            for migration in migrations():
                if migration.version > current:
                    what = f"migration {migration.version}"
                    await _execute(conn, migration.sql, what, user, owner, database)
                    applied.append(f"{migration.version:04d}_{migration.name}")
            await _execute(conn, functions_sql(), "functions.sql", user, owner, database)
            notes = await _legacy_notes(conn)
    return MigrationReport(current, latest_version(), tuple(applied), notes)


async def _execute(
    conn: asyncpg.Connection, sql: str, what: str, user: str, owner: str | None, database: str
) -> None:
    try:
        await conn.execute(sql)
    except asyncpg.InsufficientPrivilegeError as exc:
        if owner is not None:  # only the schema's owner may alter it: no GRANT lets another
            advice = (
                f"only the owner of the facescan schema ({owner}) or a superuser may change "
                f"it: run `facescan db migrate` with a URL of {owner}"
            )
        else:
            quoted = '"' + user.replace('"', '""') + '"'
            db = '"' + database.replace('"', '""') + '"'
            advice = (
                "creating the facescan schema needs CREATE on the database: run `facescan db "
                "migrate` as the owner of the database, or as that owner grant it: "
                f"GRANT CREATE ON DATABASE {db} TO {quoted}; (that role then owns the schema)"
            )
        raise errors.PermissionDenied(f"applying {what} was refused ({exc}): {advice}") from exc


async def grant_library(
    settings: DatabaseSettings | None, role: str, library: str, *, operator: bool
) -> None:
    """Lets ``role`` use ``library`` through the queue's functions: a detector's calls,
    with ``operator`` the control plane's too. Run as the schema's owner."""
    await _as_owner(settings, "grant_library", role, library, operator)


async def revoke_library(settings: DatabaseSettings | None, role: str, library: str) -> bool:
    """Takes ``library`` back from ``role``; False when it had not been granted."""
    return bool(await _as_owner(settings, "revoke_library", role, library))


async def _as_owner(settings: DatabaseSettings | None, name: str, *args: object) -> object:
    settings = settings or DatabaseSettings()
    target, user = settings.target(), settings.user()
    with errors.translated(target=target, user=user):
        conn = await asyncpg.connect(settings.dsn_value(), timeout=settings.connect_timeout_s)
    try:
        with errors.translated(target=target, user=user):
            owner = await conn.fetchval(query("schema_owner"))
            if owner is None:
                raise errors.SchemaError(
                    f"no facescan schema on {target}: run `facescan db migrate` first"
                )
            try:
                return await conn.fetchval(query(name), *args)
            except asyncpg.InsufficientPrivilegeError as exc:
                raise errors.PermissionDenied(
                    f"{name.replace('_', ' ')} was refused ({exc}): only the owner of the "
                    f"facescan schema ({owner}) or a superuser may grant libraries; run "
                    f"`facescan db grant` with a URL of {owner}"
                ) from exc
    finally:
        await conn.close()


async def _current_version(conn: asyncpg.Connection) -> int:
    if not await conn.fetchval(query("facescan_schema_exists")):
        return 0
    version = await conn.fetchval(query("schema_version"))
    return int(version or 0)


async def _check_vector(conn: asyncpg.Connection, target: str) -> None:
    row = await conn.fetchrow(query("vector_extension"))
    assert row is not None
    if row["installed"] is None and not row["available"]:
        raise errors.SchemaError(
            f"the pgvector extension is not installed on the PostgreSQL server at {target}: "
            "install it there (Debian/Ubuntu: apt install postgresql-<major>-pgvector; "
            "images: pgvector/pgvector), then run `facescan db migrate` again"
        )
    if row["installed"] is None:
        try:
            async with conn.transaction():
                await conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        except asyncpg.InsufficientPrivilegeError as exc:
            raise errors.PermissionDenied(
                f"creating the pgvector extension on {target} needs more privileges ({exc}). "
                "As a superuser, run once in this database: CREATE EXTENSION vector;"
            ) from exc


async def _legacy_notes(conn: asyncpg.Connection) -> tuple[str, ...]:
    notes = []
    for row in await conn.fetch(query("legacy_failures_table")):
        name = f"{row['schema_name']}.{row['table_name']}"
        if row["kind"] == "v":
            continue
        columns = tuple(row["columns"])
        shape = (
            "the older worker's shape"
            if set(LEGACY_COLUMNS) <= set(columns)
            else f"a different shape (columns: {', '.join(columns)})"
        )
        notes.append(
            f"found table {name} with {shape}. facescan leaves it untouched and keeps "
            "its failures in facescan.failures; the view facescan.face_detection_failures "
            "has the legacy columns. To point tools that read the old name at it, run: "
            f"ALTER TABLE {name} RENAME TO face_detection_failures_legacy; "
            f"CREATE VIEW {name} AS SELECT * FROM facescan.face_detection_failures;"
        )
    return tuple(notes)
