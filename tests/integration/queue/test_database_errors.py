"""What the queue says when the database is down, missing, foreign or forbidden."""

from __future__ import annotations

import asyncio
import shlex
from urllib.parse import urlsplit

import asyncpg
import pytest
from pydantic import SecretStr

from facescan_queue import errors, queries, repository
from facescan_queue.migrate import grant_library, migrate
from facescan_queue.models import NewImage
from facescan_queue.queries import latest_version
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings

from .support import LIB, as_user, face, new_role, result


def _grants(role: str) -> list[str]:
    return [
        f'GRANT USAGE ON SCHEMA facescan TO "{role}";',
        f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA facescan TO "{role}";',
        f'GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA facescan TO "{role}";',
    ]


async def test_an_unreachable_database_is_unavailable_naming_where_and_why() -> None:
    settings = DatabaseSettings(
        dsn=SecretStr("postgresql://u:s3cret@127.0.0.1:1/x"), connect_timeout_s=5
    )

    with pytest.raises(errors.DatabaseUnavailable) as caught:
        await Queue.connect(settings)

    message = str(caught.value)
    assert "127.0.0.1:1" in message
    assert "refused" in message.lower() or "connect call failed" in message.lower()
    assert "s3cret" not in message
    assert "s3cret" not in repr(caught.value)


async def test_migrate_on_an_unreachable_database_is_unavailable() -> None:
    settings = DatabaseSettings(
        dsn=SecretStr("postgresql://u:s3cret@127.0.0.1:1/x"), connect_timeout_s=5
    )
    with pytest.raises(errors.DatabaseUnavailable, match=r"127\.0\.0\.1:1") as caught:
        await migrate(settings)
    assert "s3cret" not in str(caught.value)


async def test_a_database_that_does_not_exist_is_unavailable(dsn: str) -> None:
    missing = dsn.replace(urlsplit(dsn).path, "/no_such_db")
    with pytest.raises(errors.DatabaseUnavailable, match="does not exist"):
        await Queue.connect(DatabaseSettings(dsn=SecretStr(missing)))


async def test_a_database_without_the_schema_says_to_migrate(empty_dsn: str) -> None:
    with pytest.raises(errors.SchemaError, match="run `facescan db migrate`"):
        await Queue.connect(DatabaseSettings(dsn=SecretStr(empty_dsn)))


async def test_a_newer_schema_says_to_upgrade_facescan(dsn: str, db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO facescan.schema_version (version, description) VALUES (999, 'future')"
    )

    with pytest.raises(errors.SchemaError, match="upgrade facescan") as caught:
        await Queue.connect(DatabaseSettings(dsn=SecretStr(dsn)))
    assert "999" in str(caught.value)
    with pytest.raises(errors.SchemaError, match="upgrade facescan"):
        await migrate(DatabaseSettings(dsn=SecretStr(dsn)))


async def test_an_older_schema_says_to_migrate(dsn: str, db: asyncpg.Connection) -> None:
    await db.execute("DELETE FROM facescan.schema_version")
    with pytest.raises(errors.SchemaError, match=f"needs {latest_version()}.*db migrate"):
        await Queue.connect(DatabaseSettings(dsn=SecretStr(dsn)))


async def test_a_user_without_grants_is_told_the_exact_grants(
    dsn: str, db: asyncpg.Connection
) -> None:
    role = await new_role(db)

    with pytest.raises(errors.PermissionDenied) as caught:
        await Queue.connect(DatabaseSettings(dsn=SecretStr(as_user(dsn, role))))

    message = str(caught.value)
    assert role in message
    for grant in _grants(role):
        assert grant in message


async def test_a_user_without_table_grants_is_told_which_tables(
    dsn: str, db: asyncpg.Connection
) -> None:
    role = await new_role(db, "GRANT USAGE ON SCHEMA facescan TO {role}")

    with pytest.raises(errors.PermissionDenied, match="images") as caught:
        await Queue.connect(DatabaseSettings(dsn=SecretStr(as_user(dsn, role))))
    assert _grants(role)[1] in str(caught.value)


async def test_a_read_only_user_is_refused_at_connect(dsn: str, db: asyncpg.Connection) -> None:
    # has_table_privilege(t, 'SELECT, INSERT, ...') is true when ANY of them is held
    role = await new_role(
        db,
        "GRANT USAGE ON SCHEMA facescan TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA facescan TO {role}",
    )

    with pytest.raises(errors.PermissionDenied, match="GRANT SELECT, INSERT, UPDATE, DELETE"):
        await Queue.connect(DatabaseSettings(dsn=SecretStr(as_user(dsn, role))))


async def test_a_refused_write_names_the_library_and_the_grant_that_allows_it(
    dsn: str, db: asyncpg.Connection
) -> None:
    role = await new_role(
        db,
        "GRANT USAGE ON SCHEMA facescan TO {role}",
        "GRANT SELECT ON ALL TABLES IN SCHEMA facescan TO {role}",
    )
    await db.execute("SELECT facescan.ensure_library($1)", LIB)
    settings = DatabaseSettings(dsn=SecretStr(as_user(dsn, role)))
    async with await Queue.connect(settings, check_schema=False) as queue:
        with pytest.raises(errors.PermissionDenied, match=f"library '{LIB}'") as caught:
            await queue.register(LIB, [NewImage("a.jpg")])
        assert await db.fetchval("SELECT count(*) FROM facescan.images") == 0

        # the advice, run as printed (by the schema's owner), lets exactly that call through
        advice = str(caught.value)
        command = shlex.split(advice[advice.index("facescan db grant") :])
        assert command[:3] == ["facescan", "db", "grant"]
        options = dict(zip(command[3::2], command[4::2], strict=False))
        await grant_library(
            DatabaseSettings(dsn=SecretStr(dsn)),
            options["--role"],
            options["--library"],
            operator="--operator" in command,
        )
        assert await queue.register(LIB, [NewImage("a.jpg")]) == 1


async def test_the_advised_grants_are_enough_to_run_the_queue(
    dsn: str, db: asyncpg.Connection
) -> None:
    role = await new_role(db)
    with pytest.raises(errors.PermissionDenied) as caught:
        await Queue.connect(DatabaseSettings(dsn=SecretStr(as_user(dsn, role))))
    advice = str(caught.value)
    await db.execute(advice[advice.index("GRANT") :])

    async with await Queue.connect(DatabaseSettings(dsn=SecretStr(as_user(dsn, role)))) as queue:
        await queue.ensure_library(LIB)
        assert await queue.register(LIB, [NewImage("a.jpg", 10, 10)]) == 1
        assert await queue.claim(LIB, "w", step=0, size_class=0, limit=1, lease_seconds=60)
        started = await queue.start_next("w")
        assert started is not None
        await queue.complete(started.image_id, "w", result([face()]))
        assert (await queue.status(LIB)).faces == 1


async def test_migrate_by_a_role_that_does_not_own_the_schema_names_the_owner(
    dsn: str, db: asyncpg.Connection
) -> None:
    """The GRANTs facescan advises for using every library, plus CREATE on the database,
    still cannot change the schema: the advice names the role that can."""
    role = await new_role(db)
    for grant in _grants(role):
        await db.execute(grant)
    database = urlsplit(dsn).path.lstrip("/")
    await db.execute(f'GRANT CREATE ON DATABASE "{database}" TO "{role}"')

    with pytest.raises(errors.PermissionDenied) as caught:
        await migrate(DatabaseSettings(dsn=SecretStr(as_user(dsn, role))))

    message = str(caught.value)
    assert "only the owner of the facescan schema (postgres)" in message
    assert "run `facescan db migrate` with a URL of postgres" in message
    assert "GRANT CREATE" not in message
    # the advice works: the owner migrates
    assert (await migrate(DatabaseSettings(dsn=SecretStr(dsn)))).applied == ()


async def test_migrate_applies_everything_once(empty_dsn: str) -> None:
    first = await migrate(DatabaseSettings(dsn=SecretStr(empty_dsn)))
    assert (first.from_version, first.to_version) == (0, latest_version())
    assert first.applied == tuple(f"{m.version:04d}_{m.name}" for m in queries.migrations())
    assert first.notes == ()

    again = await migrate(DatabaseSettings(dsn=SecretStr(empty_dsn)))

    assert again.applied == ()
    assert again.from_version == again.to_version == latest_version()
    async with await Queue.connect(DatabaseSettings(dsn=SecretStr(empty_dsn))) as queue:
        assert await queue.check_schema() == latest_version()


async def test_a_legacy_table_of_another_shape_gets_advice_that_works(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(
            "CREATE TABLE public.face_detection_failures (image text PRIMARY KEY, tries int)"
        )
        await conn.execute("INSERT INTO public.face_detection_failures VALUES ('old.jpg', 3)")

        report = await migrate(DatabaseSettings(dsn=SecretStr(empty_dsn)))

        assert report.applied == tuple(f"{m.version:04d}_{m.name}" for m in queries.migrations())
        (note,) = report.notes
        assert "public.face_detection_failures" in note
        assert "different shape (columns: image, tries)" in note
        advice = note[note.index("run: ") + len("run: ") :]
        assert advice == (
            "ALTER TABLE public.face_detection_failures RENAME TO face_detection_failures_legacy;"
            " CREATE VIEW public.face_detection_failures AS"
            " SELECT * FROM facescan.face_detection_failures;"
        )
        # the table is left untouched, and the advice runs as printed
        assert await conn.fetchval("SELECT tries FROM public.face_detection_failures") == 3
        await conn.execute(advice)
        assert await conn.fetchval("SELECT tries FROM face_detection_failures_legacy") == 3
        assert await conn.fetchval("SELECT count(*) FROM public.face_detection_failures") == 0
        assert (await migrate(DatabaseSettings(dsn=SecretStr(empty_dsn)))).notes == ()
    finally:
        await conn.close()


async def test_a_legacy_table_of_the_old_shape_is_recognised(empty_dsn: str) -> None:
    conn = await asyncpg.connect(empty_dsn)
    try:
        await conn.execute(
            "CREATE TABLE public.face_detection_failures (id serial, image_path text,"
            " retry_count int, last_error text, last_error_type text, original_width int,"
            " original_height int, file_size_bytes bigint, last_attempted_scale real,"
            " first_failure_at timestamptz, last_failure_at timestamptz,"
            " next_retry_after timestamptz, permanently_failed boolean)"
        )
    finally:
        await conn.close()

    (note,) = (await migrate(DatabaseSettings(dsn=SecretStr(empty_dsn)))).notes

    assert "public.face_detection_failures with the older worker's shape" in note


async def _terminate_backends(admin_dsn: str, dsn: str) -> int:
    admin = await asyncpg.connect(admin_dsn)
    try:
        return int(
            await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                urlsplit(dsn).path.lstrip("/"),
            )
        )
    finally:
        await admin.close()


@pytest.mark.parametrize("pin", [False, True], ids=["pooled", "pinned"])
@pytest.mark.parametrize("idle_s", [0.0, 0.2])
async def test_idle_connections_the_server_dropped_are_replaced_transparently(
    queue: Queue, dsn: str, admin_dsn: str, idle_s: float, pin: bool
) -> None:
    """Also for a detector's queue, whose calls share one connection kept out of the pool."""
    await queue.register(LIB, [NewImage("a.jpg")])
    async with await Queue.connect(DatabaseSettings(dsn=SecretStr(dsn)), pin=pin) as client:
        assert (await client.status(LIB)).images == 1  # its connection is in use now
        assert await _terminate_backends(admin_dsn, dsn) >= 1
        await asyncio.sleep(idle_s)

        assert (await client.status(LIB)).images == 1
        assert (await client.status(LIB)).images == 1


async def test_a_call_whose_connection_dies_in_flight_is_unavailable_then_recovers(
    queue: Queue, dsn: str, admin_dsn: str, db: asyncpg.Connection
) -> None:
    await queue.register(LIB, [NewImage("a.jpg", 10, 10)])
    assert await queue.claim(LIB, "w", step=0, size_class=0, limit=1, lease_seconds=60)
    started = await queue.start_next("w")
    assert started is not None
    async with db.transaction():
        await db.execute("SELECT 1 FROM facescan.images FOR UPDATE")
        call = asyncio.create_task(queue.complete(started.image_id, "w", result([face()])))
        for _ in range(500):  # until the call waits on our row lock
            pid = await db.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'"
            )
            if pid is not None:
                break
            await asyncio.sleep(0.01)
        assert pid is not None
        admin = await asyncpg.connect(admin_dsn)
        try:
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 5000)", pid)
        finally:
            await admin.close()

        with pytest.raises(errors.DatabaseUnavailable) as caught:
            await call
    assert queue.target in str(caught.value)

    # nothing was committed; the pool reconnects and the holder can commit
    await queue.complete(started.image_id, "w", result([face()]))
    assert (await queue.status(LIB)).faces == 1


async def test_calls_while_the_database_refuses_connections_are_unavailable(
    queue: Queue, dsn: str, admin_dsn: str
) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    admin = await asyncpg.connect(admin_dsn)
    try:
        await admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS false")
        await _terminate_backends(admin_dsn, dsn)
        for _ in range(3):
            try:
                await queue.status(LIB)
            except errors.DatabaseUnavailable:
                break
        else:
            raise AssertionError("the queue never noticed the database was gone")
        await admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
        assert (await queue.status(LIB)).images == 0
    finally:
        await admin.execute(f"ALTER DATABASE {name} WITH ALLOW_CONNECTIONS true")
        await admin.close()


async def test_closing_never_waits_forever_on_a_connection_left_in_use(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process on its way out (a detector whose lease is finished) exits even when a
    call never handed its connection back."""
    monkeypatch.setattr(repository, "_CLOSE_S", 0.5)
    client = await Queue.connect(DatabaseSettings(dsn=SecretStr(dsn)), pin=True)
    stuck = await client._pool.acquire()  # never released, as by a call stuck mid-flight
    pid = stuck.get_server_pid()
    await asyncio.wait_for(client.close(), 5)
    check = await asyncpg.connect(dsn)
    try:
        for _ in range(100):  # the server ends the terminated session
            alive = "SELECT count(*) FROM pg_stat_activity WHERE pid = $1"
            if not await check.fetchval(alive, pid):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the connection left in use was not terminated")
    finally:
        await check.close()
