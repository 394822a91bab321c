"""Leases: heartbeat, release (charged or not) and the reclaim of expired leases."""

from __future__ import annotations

import asyncpg
import pytest

from facescan_queue import errors
from facescan_queue.models import NewImage
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType

from .support import (
    LIB,
    STARTED_ATTEMPT,
    claim,
    claim_and_start,
    delay_of,
    expire,
    face,
    failure_row,
    image_row,
    register,
    result,
)


async def _untouched(db: asyncpg.Connection, ids: list[int]) -> None:
    """The images are pending, runnable now, never charged and without failure rows."""
    rows = await db.fetch(
        "SELECT id, state::text, attempts, step, error_type, lease_owner,"
        f" {STARTED_ATTEMPT} AS started_attempt,"
        " next_attempt_at <= now() AS runnable FROM facescan.images i WHERE id = ANY($1)",
        ids,
    )
    assert len(rows) == len(ids)
    for r in rows:
        assert (r["state"], r["attempts"], r["step"], r["error_type"]) == ("pending", 0, 0, None)
        assert (r["lease_owner"], r["started_attempt"], r["runnable"]) == (None, None, True)
    failures = await db.fetchval(
        "SELECT count(*) FROM facescan.failures WHERE image_id = ANY($1)", ids
    )
    assert failures == 0


async def test_heartbeat_extends_the_lease(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 1)
    await claim(queue, "w1")
    await db.execute("UPDATE facescan.leases SET expires_at = now() + interval '5 s'")

    assert await queue.heartbeat("w1", 600) is True

    lease = await db.fetchrow(
        "SELECT extract(epoch FROM expires_at - now()) AS left, heartbeat_at FROM facescan.leases"
    )
    assert lease is not None
    assert float(lease["left"]) == pytest.approx(600, abs=2)
    assert lease["heartbeat_at"] is not None


async def test_heartbeat_is_false_once_the_lease_is_gone(queue: Queue) -> None:
    await register(queue, 1)
    await claim(queue, "w1")
    await queue.release("w1")
    assert await queue.heartbeat("w1", 60) is False
    assert await queue.heartbeat("never-claimed", 60) is False


async def test_release_charged_oom_charges_only_the_started_image(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 5)
    batch = await claim(queue, "w1", limit=5)
    started = await queue.start_next("w1")
    assert started is not None

    released = await queue.release("w1", charge=ErrorType.OOM, error="OOMKilled")

    assert (released.owner, released.charged_image, released.released) == (
        "w1",
        started.image_id,
        4,
    )
    culprit = await image_row(db, started.image_id)
    assert (culprit["state"], culprit["step"], culprit["attempts"]) == ("pending", 1, 0)
    assert abs(await delay_of(db, started.image_id)) < 2
    failure = await failure_row(db, started.image_id)
    assert failure is not None
    assert (failure["error_type"], failure["last_error"], failure["attempts"]) == (
        "oom",
        "OOMKilled",
        1,
    )
    await _untouched(db, [c.image_id for c in batch if c.image_id != started.image_id])
    assert await queue.leases(LIB) == []
    assert len(await claim(queue, "w2", limit=10)) == 4


async def test_release_charges_a_default_reason_naming_the_worker(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "job-7")
    await queue.release("job-7", charge=ErrorType.CRASH)
    failure = await failure_row(db, started.image_id)
    assert failure is not None
    assert "job-7" in failure["last_error"]


async def test_a_preempted_lease_charges_nobody(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 3)
    batch = await claim(queue, "w1", limit=3)
    started = await queue.start_next("w1")
    assert started is not None

    released = await queue.release("w1")

    assert (released.charged_image, released.released) == (None, 3)
    await _untouched(db, [c.image_id for c in batch])
    attempt = await db.fetchrow(
        "SELECT outcome::text, error_type, finished_at FROM facescan.attempts WHERE id = $1",
        started.attempt_id,
    )
    assert attempt is not None
    assert (attempt["outcome"], attempt["error_type"]) == ("released", None)
    assert attempt["finished_at"] is not None
    with pytest.raises(errors.LeaseLost):
        await queue.complete(started.image_id, "w1", result([face()]))


async def test_release_of_a_lease_without_a_started_image_charges_nobody(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 2)
    batch = await claim(queue, "w1", limit=2)
    released = await queue.release("w1", charge=ErrorType.OOM)
    assert (released.charged_image, released.released) == (None, 2)
    await _untouched(db, [c.image_id for c in batch])


async def test_releasing_an_unknown_lease_is_a_no_op(queue: Queue) -> None:
    released = await queue.release("nobody", charge=ErrorType.CRASH)
    assert (released.charged_image, released.released) == (None, 0)


async def test_reclaim_charges_crash_to_the_started_image_only(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 4)
    batch = await claim(queue, "dead-worker", limit=3)
    started = await queue.start_next("dead-worker")
    assert started is not None
    await expire(db, "dead-worker")

    reclaimed = await queue.reclaim_expired(LIB)

    assert [(r.owner, r.charged_image, r.released) for r in reclaimed] == [
        ("dead-worker", started.image_id, 2)
    ]
    culprit = await image_row(db, started.image_id)
    assert (culprit["state"], culprit["attempts"], culprit["error_type"]) == (
        "pending",
        1,
        "crash",
    )
    assert await delay_of(db, started.image_id) == pytest.approx(60, abs=2)
    failure = await failure_row(db, started.image_id)
    assert failure is not None
    assert "lease expired" in failure["last_error"]
    await _untouched(db, [c.image_id for c in batch if c.image_id != started.image_id])
    assert await queue.leases(LIB) == []


async def test_reclaim_leaves_live_leases_and_other_libraries_alone(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await queue.ensure_library("other")
    await register(queue, 2)
    await queue.register("other", [NewImage("a")])
    await claim(queue, "live", limit=1)
    await claim(queue, "gone", limit=1)
    await claim(queue, "elsewhere", library="other", size_class=5)
    await expire(db, "gone")
    await expire(db, "elsewhere")

    reclaimed = await queue.reclaim_expired(LIB)

    assert [r.owner for r in reclaimed] == ["gone"]
    assert [lease.owner for lease in await queue.leases(LIB)] == ["live"]
    assert [r.owner for r in await queue.reclaim_expired()] == ["elsewhere"]
    assert await queue.reclaim_expired() == []


async def test_a_reclaimed_worker_can_neither_commit_nor_fail_nor_heartbeat(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")
    await expire(db, "w1")
    await queue.reclaim_expired()

    with pytest.raises(errors.LeaseLost, match="not leased to w1"):
        await queue.complete(started.image_id, "w1", result([face()]))
    with pytest.raises(errors.LeaseLost):
        await queue.fail(started.image_id, "w1", ErrorType.OOM, "late")
    with pytest.raises(errors.LeaseLost):
        await queue.step_down(started.image_id, "w1", "late")
    assert await queue.heartbeat("w1", 60) is False
    assert await queue.start_next("w1") is None

    row = await image_row(db, started.image_id)
    assert (row["state"], row["attempts"], row["step"]) == ("pending", 1, 0)
    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == 0


async def test_a_killed_holder_is_charged_crash_and_its_batch_goes_back(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 6)
    survivor = await claim(queue, "survivor", limit=2)
    batch = await claim(queue, "victim", limit=4)
    started = await queue.start_next("victim")
    assert started is not None
    # the victim dies: it never heartbeats again while the survivor does
    await expire(db)
    assert await queue.heartbeat("survivor", 60) is True

    reclaimed = await queue.reclaim_expired()

    assert [(r.owner, r.charged_image, r.released) for r in reclaimed] == [
        ("victim", started.image_id, 3)
    ]
    await _untouched(db, [c.image_id for c in batch if c.image_id != started.image_id])
    leased = await db.fetch("SELECT id FROM facescan.images WHERE lease_owner = 'survivor'")
    assert {r["id"] for r in leased} == {c.image_id for c in survivor}
    assert (await failure_row(db, started.image_id)) is not None


async def test_a_holder_killed_mid_commit_commits_nothing(
    queue: Queue, db: asyncpg.Connection, dsn: str
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")
    holder = await asyncpg.connect(dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute(
            "SELECT facescan.complete_image($1, 'w1', 1280, 10, 10, 5,"
            ' \'[{"top": 1, "right": 2, "bottom": 3, "left": 1}]\'::jsonb)',
            started.image_id,
        )
        await db.execute("SELECT pg_terminate_backend($1)", holder.get_server_pid())
    finally:
        holder.terminate()
    await expire(db)

    reclaimed = await queue.reclaim_expired()

    assert [r.charged_image for r in reclaimed] == [started.image_id]
    row = await image_row(db, started.image_id)
    assert (row["state"], row["error_type"], row["face_count"]) == ("pending", "crash", 0)
    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == 0
    assert await db.fetchval("SELECT count(*) FROM facescan.detections") == 0
