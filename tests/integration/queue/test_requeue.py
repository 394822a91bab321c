"""Requeue (failing and dead images back to work) and rescan (done images again)."""

from __future__ import annotations

import asyncpg

from facescan_queue.models import LibraryPolicy
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType

from .support import (
    LIB,
    claim,
    claim_and_start,
    face,
    failure_row,
    make_due,
    new_images,
    register,
    result,
)


async def _fail(queue: Queue, owner: str, error_type: ErrorType, *, step: int = 0) -> int:
    started = await claim_and_start(queue, owner, step=step)
    await queue.fail(started.image_id, owner, error_type, f"{error_type} happened")
    await queue.release(owner)
    return started.image_id


async def _states(db: asyncpg.Connection) -> dict[str, tuple[str, int]]:
    rows = await db.fetch("SELECT path, state::text, attempts FROM facescan.images")
    return {r["path"]: (r["state"], r["attempts"]) for r in rows}


async def _setup(queue: Queue, db: asyncpg.Connection) -> dict[str, int]:
    """img 0: dead (decode), 1: dead (crash), 2: retrying (crash), 3: done, 4: fresh."""
    await queue.ensure_library(LIB, LibraryPolicy(max_attempts=2))
    await queue.register(LIB, new_images(5)[:3])
    ids = {}
    ids["decode"] = await _fail(queue, "a1", ErrorType.DECODE)
    ids["crash"] = await _fail(queue, "b1", ErrorType.CRASH)
    ids["retrying"] = await _fail(queue, "c1", ErrorType.CRASH)
    await make_due(db)
    assert await _fail(queue, "a2", ErrorType.DECODE) == ids["decode"]
    assert await _fail(queue, "b2", ErrorType.CRASH) == ids["crash"]
    await db.execute(
        "UPDATE facescan.images SET next_attempt_at = now() + interval '1 hour' WHERE id = $1",
        ids["retrying"],
    )
    await queue.register(LIB, new_images(5)[3:])
    done = await claim_and_start(queue, "d1")
    await queue.complete(done.image_id, "d1", result([face()]))
    assert await _states(db) == {
        "img/00000.jpg": ("dead", 2),
        "img/00001.jpg": ("dead", 2),
        "img/00002.jpg": ("pending", 1),
        "img/00003.jpg": ("done", 0),
        "img/00004.jpg": ("pending", 0),
    }
    return ids


async def test_requeue_only_dead_revives_dead_images_with_a_fresh_budget(
    queue: Queue, db: asyncpg.Connection
) -> None:
    ids = await _setup(queue, db)

    assert await queue.requeue(LIB, only_dead=True) == 2

    assert await _states(db) == {
        "img/00000.jpg": ("pending", 0),
        "img/00001.jpg": ("pending", 0),
        "img/00002.jpg": ("pending", 1),
        "img/00003.jpg": ("done", 0),
        "img/00004.jpg": ("pending", 0),
    }
    failure = await failure_row(db, ids["crash"])
    assert failure is not None
    assert failure["dead"] is False
    assert failure["next_retry_at"] is not None
    status = await queue.status(LIB)
    assert (status.dead, status.retrying, status.pending) == (0, 3, 4)
    claimed = {c.image_id for c in await claim(queue, "w", limit=10)}
    assert claimed == {ids["decode"], ids["crash"], 5}


async def test_a_requeued_image_gets_the_whole_attempt_budget_again(
    queue: Queue, db: asyncpg.Connection
) -> None:
    ids = await _setup(queue, db)
    await queue.requeue(LIB, only_dead=True, paths=["img/00001.jpg"])

    assert await _fail(queue, "again1", ErrorType.CRASH) == ids["crash"]
    row = await db.fetchrow("SELECT state::text, attempts FROM facescan.images WHERE id = $1", 2)
    assert row is not None
    assert tuple(row) == ("pending", 1)


async def test_requeue_by_error_type(queue: Queue, db: asyncpg.Connection) -> None:
    ids = await _setup(queue, db)

    assert await queue.requeue(LIB, only_dead=True, error_type=ErrorType.DECODE) == 1

    states = await _states(db)
    assert states["img/00000.jpg"] == ("pending", 0)
    assert states["img/00001.jpg"] == ("dead", 2)
    assert {c.image_id for c in await claim(queue, "w", limit=10)} == {ids["decode"], 5}


async def test_requeue_by_paths(queue: Queue, db: asyncpg.Connection) -> None:
    await _setup(queue, db)

    assert await queue.requeue(LIB, paths=["img/00001.jpg", "img/00003.jpg", "nope"]) == 1

    states = await _states(db)
    assert states["img/00001.jpg"] == ("pending", 0)
    assert states["img/00000.jpg"] == ("dead", 2)
    assert states["img/00003.jpg"] == ("done", 0)  # done images are not failing


async def test_requeue_without_only_dead_also_makes_waiting_retries_runnable_now(
    queue: Queue, db: asyncpg.Connection
) -> None:
    ids = await _setup(queue, db)

    assert await queue.requeue(LIB) == 3

    assert all(state == "pending" for state, _ in (await _states(db)).values() if state != "done")
    claimed = {c.image_id for c in await claim(queue, "w", limit=10)}
    assert claimed == {ids["decode"], ids["crash"], ids["retrying"], 5}


async def test_requeue_of_another_library_touches_nothing_here(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await _setup(queue, db)
    await queue.ensure_library("other")
    assert await queue.requeue("other") == 0
    assert await queue.requeue("does-not-exist") == 0
    assert (await queue.status(LIB)).dead == 2


async def test_requeue_keeps_the_cascade_step_a_dead_image_reached(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await queue.ensure_library(
        LIB, LibraryPolicy(cascade_models=("cnn", "hog"), cascade_scales=(1.0, 1.0), max_attempts=1)
    )
    await register(queue, 1)
    await _fail(queue, "w1", ErrorType.OOM)
    image_id = await _fail(queue, "w2", ErrorType.OOM, step=1)
    assert (await queue.status(LIB)).dead == 1

    assert await queue.requeue(LIB, only_dead=True) == 1

    assert [c.image_id for c in await claim(queue, "w3", step=1)] == [image_id]


async def test_rescan_only_degraded_requeues_degraded_results_from_the_first_step(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 3)
    full = await claim_and_start(queue, "w1")
    await queue.complete(full.image_id, "w1", result([face()]))
    reduced = await claim_and_start(queue, "w2")
    await queue.step_down(reduced.image_id, "w2", "oom")
    await queue.complete(reduced.image_id, "w2", result([face(), face(1)]))

    assert await queue.rescan(LIB) == 1

    row = await db.fetchrow(
        "SELECT state::text, step, attempts, face_count FROM facescan.images WHERE id = $1",
        reduced.image_id,
    )
    assert row is not None
    assert tuple(row) == ("pending", 0, 0, 2)
    status = await queue.status(LIB)
    assert (status.done, status.degraded, status.pending, status.faces) == (1, 0, 2, 3)
    claimed = {c.image_id for c in await claim(queue, "w3", step=0, limit=10)}
    assert reduced.image_id in claimed


async def test_rescan_everything_or_given_paths(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 3)
    for i in range(3):
        started = await claim_and_start(queue, f"w{i}")
        await queue.complete(started.image_id, f"w{i}", result())

    assert await queue.rescan(LIB, only_degraded=False, paths=["img/00001.jpg"]) == 1
    assert await queue.rescan(LIB, only_degraded=False) == 2
    assert await queue.rescan(LIB, only_degraded=False) == 0
    assert (await queue.status(LIB)).pending == 3


async def test_rescan_leaves_facescans_own_images_alone(
    queue: Queue, db: asyncpg.Connection
) -> None:
    """An uploaded reference photo (POST /people) is a done image at .facescan/... with no
    file: a rescan, even of everything or of other settings, never queues it again."""
    await register(queue, 1, prefix=".facescan/uploads")
    started = await claim_and_start(queue, "w0")
    await queue.complete(started.image_id, "w0", result([face()]))

    assert await queue.rescan(LIB, only_degraded=False) == 0
    assert await queue.done_with_other_settings(LIB, [("cnn", 0.5)], 640) == []
    assert await queue.rescan_other_settings(LIB, [("cnn", 0.5)], 640) == 0
    assert (await queue.status(LIB)).done == 1
