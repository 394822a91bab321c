"""Library roles: a role granted one library (`facescan db grant`) uses that library
through the queue's functions and nothing else: not another library's rows, not the
tables, not the schema."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Any

import asyncpg
import pytest
from pydantic import SecretStr

from facescan_queue import errors
from facescan_queue.migrate import grant_library, migrate, migrate_if_owner, revoke_library
from facescan_queue.models import NewImage
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings
from facescan_queue.types import ErrorType

from .support import as_user, face, new_images, new_role, result

LIBRARIES = ("ns-a/photos", "ns-b/photos")


@dataclass
class Tenant:
    """One library with its detector's and its operator's roles, each connected."""

    library: str
    detector: Queue
    operator: Queue
    detector_role: str
    image_ids: list[int]


@pytest.fixture
async def tenants(dsn: str, db: asyncpg.Connection) -> AsyncIterator[dict[str, Tenant]]:
    """Two libraries in one database, each with 3 images, a lease "job-<library>" of its
    operator's holding them and one started by its detector."""
    owner = DatabaseSettings(dsn=SecretStr(dsn))
    made: dict[str, Tenant] = {}
    try:
        for library in LIBRARIES:
            detector_role = await new_role(db, prefix="detector")
            operator_role = await new_role(db, prefix="operator")
            await grant_library(owner, detector_role, library, operator=False)
            await grant_library(owner, operator_role, library, operator=True)
            operator = await Queue.connect(
                DatabaseSettings(dsn=SecretStr(as_user(dsn, operator_role)))
            )
            detector = await Queue.connect(
                DatabaseSettings(dsn=SecretStr(as_user(dsn, detector_role)))
            )
            made[library] = Tenant(library, detector, operator, detector_role, [])
            await operator.ensure_library(library)
            assert await operator.register(library, new_images(3)) == 3
            claimed = await operator.claim(
                library, _job(library), step=0, size_class=0, limit=3, lease_seconds=300
            )
            made[library].image_ids = [c.image_id for c in claimed]
            assert await detector.start_next(_job(library)) is not None
        yield made
    finally:
        for tenant in made.values():
            await tenant.detector.close()
            await tenant.operator.close()


def _job(library: str) -> str:
    return f"job-{library}"


async def _snapshot(db: asyncpg.Connection, library: str) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT i.*, l.expires_at FROM facescan.images i"
        " LEFT JOIN facescan.leases l ON l.owner = i.lease_owner"
        " WHERE i.library = $1 ORDER BY i.id",
        library,
    )


async def _refused(call: Awaitable[Any], library: str) -> None:
    with pytest.raises(errors.PermissionDenied, match=f"may not use library '{library}'"):
        await call


@pytest.mark.parametrize(("mine", "theirs"), [LIBRARIES, LIBRARIES[::-1]])
async def test_a_detector_role_is_refused_the_other_librarys_rows(
    tenants: dict[str, Tenant], db: asyncpg.Connection, mine: str, theirs: str
) -> None:
    me, other = tenants[mine], tenants[theirs]
    job = _job(theirs)
    image = other.image_ids[0]
    before = await _snapshot(db, theirs)

    await _refused(
        me.detector.claim(theirs, "stolen", step=0, size_class=0, limit=10, lease_seconds=60),
        theirs,
    )
    await _refused(me.detector.start_next(job), theirs)
    await _refused(me.detector.peek_next(job), theirs)
    await _refused(me.detector.heartbeat(job, 3600), theirs)
    await _refused(me.detector.complete(image, job, result([face()])), theirs)
    await _refused(me.detector.complete_and_start_next(image, job, result()), theirs)
    await _refused(me.detector.fail(image, job, ErrorType.DECODE, "corrupt"), theirs)
    await _refused(me.detector.step_down(image, job, "out of memory"), theirs)
    await _refused(me.detector.release(job, charge=ErrorType.CRASH), theirs)

    assert await _snapshot(db, theirs) == before
    # its own library works all the way
    started = await me.detector.start_next(_job(mine))
    assert started is not None
    await me.detector.complete(started.image_id, _job(mine), result([face()]))
    assert (await me.operator.status(mine)).done == 1
    assert (await other.operator.status(theirs)).done == 0


@pytest.mark.parametrize(("mine", "theirs"), [LIBRARIES, LIBRARIES[::-1]])
async def test_an_operator_role_is_refused_the_other_library(
    tenants: dict[str, Tenant], db: asyncpg.Connection, mine: str, theirs: str
) -> None:
    me = tenants[mine].operator
    before = await _snapshot(db, theirs)
    policy = await db.fetchrow("SELECT * FROM facescan.libraries WHERE name = $1", theirs)

    await _refused(me.ensure_library(theirs), theirs)
    await _refused(me.register(theirs, [NewImage("intruder.jpg")]), theirs)
    await _refused(
        me.claim(theirs, "stolen", step=0, size_class=0, limit=10, lease_seconds=60), theirs
    )
    await _refused(me.rescan(theirs, only_degraded=False), theirs)
    await _refused(me.requeue(theirs), theirs)
    await _refused(me.status(theirs), theirs)
    await _refused(me.runnable_groups(theirs, cap=10), theirs)
    await _refused(me.leases(theirs), theirs)
    await _refused(me.failures(theirs), theirs)
    await _refused(me.recent_outcomes(theirs, window=10), theirs)
    await _refused(me.attempt_clock(theirs), theirs)
    await _refused(me.reclaim_expired(theirs), theirs)
    await _refused(me.release(_job(theirs)), theirs)
    await _refused(me.image(theirs, new_images(1)[0].path), theirs)
    await _refused(me.faces(tenants[theirs].image_ids[0]), theirs)
    await _refused(me.faces_per_image(theirs), theirs)
    with pytest.raises(errors.PermissionDenied, match="every library"):
        await me.reclaim_expired()  # every library's leases

    assert await _snapshot(db, theirs) == before
    assert await db.fetchrow("SELECT * FROM facescan.libraries WHERE name = $1", theirs) == policy
    assert await me.libraries() == [mine]
    assert [lease.owner for lease in await me.leases(mine)] == [_job(mine)]


async def test_a_detector_role_has_no_operator_calls_and_no_table(
    tenants: dict[str, Tenant], dsn: str
) -> None:
    mine = tenants[LIBRARIES[0]]
    with pytest.raises(errors.PermissionDenied, match="for the operator's calls"):
        await mine.detector.register(mine.library, [NewImage("more.jpg")])
    # a Job's detector claims its own batch when it starts: that is a detector's call
    assert (
        await mine.detector.claim(
            mine.library, "own", step=0, size_class=0, limit=1, lease_seconds=60
        )
        == []
    )  # (the fixture leased every image already)

    conn = await asyncpg.connect(as_user(dsn, mine.detector_role))
    try:
        for statement in (
            "SELECT count(*) FROM facescan.images",
            "SELECT count(*) FROM facescan.faces",
            "UPDATE facescan.images SET state = 'pending'",
            "DELETE FROM facescan.faces",
            "INSERT INTO facescan.library_roles (role, library) VALUES (current_user, 'x')",
            "CREATE TABLE facescan.mine (id int)",
            "ALTER TABLE facescan.images ADD COLUMN mine int",
            # a helper the functions call, called directly, runs with the caller's rights
            "SELECT facescan.recount('ns-b/photos')",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await conn.execute(statement)
    finally:
        await conn.close()
    with pytest.raises(errors.PermissionDenied, match=r"owner of the facescan schema \(postgres\)"):
        await migrate(DatabaseSettings(dsn=SecretStr(as_user(dsn, mine.detector_role))))
    # the one-machine commands (`facescan register --dsn`) leave the schema to the admin
    role = DatabaseSettings(dsn=SecretStr(as_user(dsn, mine.detector_role)))
    assert await migrate_if_owner(role) is None
    owned = await migrate_if_owner(DatabaseSettings(dsn=SecretStr(dsn)))
    assert owned is not None
    assert owned.applied == ()


async def test_a_role_granted_a_library_passes_the_schema_check_and_one_granted_none_is_told_how(
    dsn: str, db: asyncpg.Connection
) -> None:
    role = await new_role(db, "GRANT USAGE ON SCHEMA facescan TO {role}")
    settings = DatabaseSettings(dsn=SecretStr(as_user(dsn, role)))
    with pytest.raises(errors.PermissionDenied) as caught:
        await Queue.connect(settings)
    assert f"facescan db grant --role {role} --library NAME" in str(caught.value)

    await grant_library(DatabaseSettings(dsn=SecretStr(dsn)), role, "ns-a/photos", operator=False)
    async with await Queue.connect(settings) as queue:
        assert await queue.libraries() == []  # granted, not yet created by its operator

    assert await revoke_library(DatabaseSettings(dsn=SecretStr(dsn)), role, "ns-a/photos")
    with pytest.raises(errors.PermissionDenied):
        await Queue.connect(settings)


async def test_granting_is_the_owners_and_needs_an_existing_role(
    dsn: str, db: asyncpg.Connection
) -> None:
    owner = DatabaseSettings(dsn=SecretStr(dsn))
    with pytest.raises(errors.InvalidArgument, match="no database role"):
        await grant_library(owner, "nobody_here", "ns-a/photos", operator=False)

    role = await new_role(db)
    await grant_library(owner, role, "ns-a/photos", operator=True)
    other = await new_role(db)
    with pytest.raises(errors.PermissionDenied, match=r"owner of the facescan schema \(postgres\)"):
        await grant_library(
            DatabaseSettings(dsn=SecretStr(as_user(dsn, role))), other, "ns-a/photos", operator=True
        )
    assert (
        await db.fetchval("SELECT count(*) FROM facescan.library_roles WHERE role = $1", other) == 0
    )


async def test_facescan_db_grant_lets_the_role_in(dsn: str, db: asyncpg.Connection) -> None:
    """The command the README documents, as a user runs it."""

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "facescan_operator.cli", "db", "grant", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={"FACESCAN_DSN": dsn, "PATH": "/usr/bin:/bin"},
        )

    role = f"photos-detector-{uuid.uuid4().hex[:8]}"  # roles are the server's, not the db's
    await db.execute(f'CREATE ROLE "{role}" LOGIN')
    granted = run("--role", role, "--library", "ns-a/photos")
    assert granted.returncode == 0, granted.stderr
    assert f"role {role} may use library ns-a/photos for a detector's calls" in granted.stdout
    async with await Queue.connect(DatabaseSettings(dsn=SecretStr(as_user(dsn, role)))) as queue:
        assert await queue.libraries() == []

    missing = run("--role", "nobody_here", "--library", "ns-a/photos")
    assert missing.returncode == 2
    assert "no database role nobody_here" in missing.stderr


async def test_a_detector_role_works_its_lease_from_start_to_done(
    tenants: dict[str, Tenant],
) -> None:
    mine = tenants[LIBRARIES[0]]
    job = _job(mine.library)
    started = await mine.detector.start_next(job)
    assert started is not None
    assert await mine.detector.heartbeat(job, 300)
    assert await mine.detector.peek_next(job) is not None
    while started is not None:
        started = await mine.detector.complete_and_start_next(
            started.image_id, job, result([face()])
        )
    assert (await mine.detector.release(job)).released == 0
    status = await mine.operator.status(mine.library)
    assert (status.done, status.faces) == (3, 3)
