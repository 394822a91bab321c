"""Concurrent claimers, completers and reapers: no image is ever leased or won twice."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import cast

import asyncpg
import pytest

from facescan_queue import errors
from facescan_queue.models import Released
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings
from facescan_queue.types import ErrorType

from .support import LIB, claim, claim_and_start, expire, face, register, result

IMAGES = 2000
CLAIMERS = 8


async def _claim_until_empty(queue: Queue, name: str) -> list[int]:
    got: list[int] = []
    for n in range(IMAGES):
        batch = await queue.claim(
            LIB, f"{name}-{n}", step=0, size_class=0, limit=25, lease_seconds=600
        )
        if not batch:
            return got
        got.extend(c.image_id for c in batch)
    raise AssertionError("never ran out")


async def _assert_all_leased_once(db: asyncpg.Connection, claimed: list[int]) -> None:
    duplicates = [i for i, n in Counter(claimed).items() if n > 1]
    assert duplicates == []
    ids = {r["id"] for r in await db.fetch("SELECT id FROM facescan.images")}
    assert set(claimed) == ids
    assert len(ids) == IMAGES
    leased = await db.fetchval(
        "SELECT count(*) FROM facescan.images i JOIN facescan.leases l ON l.owner = i.lease_owner"
        " WHERE i.state = 'leased'"
    )
    assert leased == IMAGES
    empty_leases = await db.fetchval(
        "SELECT count(*) FROM facescan.leases l WHERE NOT EXISTS"
        " (SELECT 1 FROM facescan.images i WHERE i.lease_owner = l.owner)"
    )
    assert empty_leases == 0


async def test_concurrent_claimers_over_the_pool_never_share_an_image(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, IMAGES)

    results = await asyncio.gather(
        *(_claim_until_empty(queue, f"task{i}") for i in range(CLAIMERS))
    )

    await _assert_all_leased_once(db, [i for r in results for i in r])
    assert (await queue.status(LIB)).leased == IMAGES


def _claim_in_a_thread(dsn: str, name: str) -> list[int]:
    """A claimer with its own event loop and its own connection, as a separate worker."""

    async def run() -> list[int]:
        conn = await asyncpg.connect(dsn)
        got: list[int] = []
        try:
            for n in range(IMAGES):
                rows = await conn.fetch(
                    "SELECT image_id FROM facescan.claim_batch($1, $2, 0::smallint, 0::smallint,"
                    " 25, 600)",
                    LIB,
                    f"{name}-{n}",
                )
                if not rows:
                    return got
                got.extend(r["image_id"] for r in rows)
        finally:
            await conn.close()
        raise AssertionError("never ran out")

    return asyncio.run(run())


async def test_concurrent_claimers_on_separate_connections_in_threads_never_share_an_image(
    queue: Queue, db: asyncpg.Connection, dsn: str
) -> None:
    await register(queue, IMAGES)

    results = await asyncio.gather(
        *(asyncio.to_thread(_claim_in_a_thread, dsn, f"thread{i}") for i in range(CLAIMERS))
    )

    await _assert_all_leased_once(db, [i for r in results for i in r])
    assert (await queue.status(LIB)).leased == IMAGES


async def test_complete_racing_reclaim_has_exactly_one_winner(
    queue: Queue, db: asyncpg.Connection, settings: DatabaseSettings
) -> None:
    n = 40
    await register(queue, n)
    started = {}
    for i in range(n):
        image = await claim_and_start(queue, f"w{i}")
        started[image.image_id] = f"w{i}"
    await expire(db)

    async def complete(image_id: int, owner: str) -> bool:
        try:
            await queue.complete(image_id, owner, result([face(1), face(2)]))
        except errors.LeaseLost:
            return False
        return True

    async with await Queue.connect(settings, max_size=1) as reaper:
        outcomes = await asyncio.gather(
            reaper.reclaim_expired(), *(complete(i, o) for i, o in started.items())
        )
    reclaimed = cast(list[Released], outcomes[0])
    won = {i: bool(o) for i, o in zip(started, outcomes[1:], strict=True)}
    charged = {r.charged_image for r in reclaimed if r.charged_image is not None}

    rows = {
        r["id"]: r
        for r in await db.fetch(
            "SELECT i.id, i.state::text, i.error_type::text, i.attempts,"
            " (SELECT count(*) FROM facescan.faces f WHERE f.image_id = i.id) AS faces"
            " FROM facescan.images i"
        )
    }
    for image_id, completed in won.items():
        row = rows[image_id]
        if completed:
            assert image_id not in charged
            assert (row["state"], row["faces"], row["error_type"]) == ("done", 2, None)
        else:
            assert image_id in charged
            assert (row["state"], row["faces"], row["error_type"], row["attempts"]) == (
                "pending",
                0,
                "crash",
                1,
            )
    assert await db.fetchval("SELECT count(*) FROM facescan.leases") == 0
    status = await queue.status(LIB)
    assert status.done == sum(won.values())
    assert status.done + status.retrying == n


async def test_complete_after_a_reclaim_that_got_there_first_is_lease_lost(
    queue: Queue, db: asyncpg.Connection, dsn: str
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")
    await expire(db)
    reaper = await asyncpg.connect(dsn)
    try:
        async with reaper.transaction():
            charged = await reaper.fetchval("SELECT charged_image FROM facescan.reclaim_expired()")
            # the worker's commit arrives while the reclaim is not committed yet
            commit = asyncio.create_task(queue.complete(started.image_id, "w1", result([face()])))
            await asyncio.sleep(0.2)
            assert not commit.done()  # waits on the image row
    finally:
        await reaper.close()

    with pytest.raises(errors.LeaseLost):
        await commit
    assert charged == started.image_id
    row = await db.fetchrow("SELECT state::text, face_count FROM facescan.images")
    assert row is not None
    assert tuple(row) == ("pending", 0)
    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == 0


async def test_reclaim_after_a_complete_that_got_there_first_charges_nobody(
    queue: Queue, db: asyncpg.Connection, dsn: str
) -> None:
    await register(queue, 3)
    started = await claim_and_start(queue, "w1", limit=3)
    await expire(db)
    worker = await asyncpg.connect(dsn)
    try:
        async with worker.transaction():
            await worker.execute(
                "SELECT facescan.complete_image($1, 'w1', 1280, 10, 10, 5, $2::jsonb)",
                started.image_id,
                json.dumps([face().as_json()]),
            )
            # the reaper comes while the worker's commit is not committed yet
            reap = asyncio.create_task(queue.reclaim_expired())
            await asyncio.sleep(0.2)
            assert not reap.done()
    finally:
        await worker.close()

    (reclaimed,) = await reap
    assert (reclaimed.owner, reclaimed.charged_image, reclaimed.released) == ("w1", None, 2)
    row = await db.fetchrow(
        "SELECT state::text, face_count, error_type FROM facescan.images WHERE id = $1",
        started.image_id,
    )
    assert row is not None
    assert tuple(row) == ("done", 1, None)
    assert await db.fetchval("SELECT count(*) FROM facescan.failures") == 0


async def test_workers_processing_concurrently_keep_the_counts_true(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 200)

    async def worker(i: int) -> None:
        for n in range(100):
            owner = f"w{i}-{n}"
            if not await claim(queue, owner, limit=5):
                return
            while (image := await queue.start_next(owner)) is not None:
                if image.image_id % 7 == 0:
                    await queue.fail(image.image_id, owner, ErrorType.OOM, "oom")
                else:
                    await queue.complete(image.image_id, owner, result([face()]))
            await queue.release(owner)

    await asyncio.gather(*(worker(i) for i in range(CLAIMERS)))

    status = await queue.status(LIB)
    assert (status.done, status.pending, status.leased) == (200 - 200 // 7, 200 // 7, 0)
    assert status.faces == status.done


async def test_a_queue_with_asynchronous_commits_commits_whole_results_others_see(
    settings: DatabaseSettings, queue: Queue, db: asyncpg.Connection
) -> None:
    """The detector's connection (pinned, synchronous_commit off): every result still lands
    whole, with its faces, and is seen by the control plane's connections at once."""
    await register(queue, 20)
    async with await Queue.connect(settings, max_size=3, pin=True, async_commit=True) as fast:
        await claim(fast, "job-a", limit=20)
        image = await fast.start_next("job-a")
        while image is not None:
            image = await fast.complete_and_start_next(image.image_id, "job-a", result([face()]))
        await fast.release("job-a")
        async with fast._pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "off"
    assert await db.fetchval("SHOW synchronous_commit") == "on"
    status = await queue.status(LIB)
    assert (status.done, status.faces, status.leased) == (20, 20, 0)
    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == 20
