"""Claiming batches: order, filters, limits and the refusals of claim_batch."""

from __future__ import annotations

import asyncpg
import pytest

from facescan_queue import errors
from facescan_queue.models import NewImage
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType

from .support import LEASE_S, LIB, claim, claim_and_start, make_due, new_images, register


def _img(path: str) -> NewImage:
    return NewImage(path, 100, 100)


async def _paths(queue: Queue, owner: str, *, size_class: int = 0, limit: int = 100) -> list[str]:
    return [c.path for c in await claim(queue, owner, size_class=size_class, limit=limit)]


async def test_claim_takes_highest_priority_then_fewest_attempts_then_oldest(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await queue.register(LIB, [_img("x1"), _img("x2")])
    started = await claim_and_start(queue, "w0")
    assert started.path == "x1"
    await queue.fail(started.image_id, "w0", ErrorType.CRASH, "boom")
    await make_due(db)
    await queue.register(LIB, [_img("x3")])
    await queue.register(LIB, [_img("x4")], priority=3)

    order = [await _paths(queue, f"c{i}", limit=1) for i in range(5)]

    assert order == [["x4"], ["x2"], ["x3"], ["x1"], []]


async def test_start_next_walks_a_batch_in_claim_order(queue: Queue) -> None:
    await queue.register(LIB, [_img("b"), _img("c")])
    await queue.register(LIB, [_img("a")], priority=1)
    assert sorted(await _paths(queue, "w", limit=10)) == ["a", "b", "c"]

    walked = []
    while (started := await queue.start_next("w")) is not None:
        walked.append(started.path)
        await queue.fail(started.image_id, "w", ErrorType.INTERNAL, "bug")
    assert walked == ["a", "b", "c"]


async def test_claim_respects_the_limit(queue: Queue) -> None:
    await register(queue, 10)
    first = await claim(queue, "w1", limit=4)
    second = await claim(queue, "w2", limit=100)
    assert len(first) == 4
    assert len(second) == 6
    assert {c.image_id for c in first}.isdisjoint(c.image_id for c in second)
    leases = {lease.owner: lease.images for lease in await queue.leases(LIB)}
    assert leases == {"w1": 4, "w2": 6}


async def test_two_libraries_never_mix(queue: Queue, db: asyncpg.Connection) -> None:
    await queue.ensure_library("other")
    await queue.register(LIB, new_images(3))
    await queue.register("other", new_images(3))

    mine = await claim(queue, "w1", limit=100)
    theirs = await claim(queue, "w2", limit=100, library="other")

    libraries = {
        r["id"]: r["library"] for r in await db.fetch("SELECT id, library FROM facescan.images")
    }
    assert {libraries[c.image_id] for c in mine} == {LIB}
    assert {libraries[c.image_id] for c in theirs} == {"other"}
    assert len(mine) == len(theirs) == 3
    assert [lease.owner for lease in await queue.leases("other")] == ["w2"]


async def test_claim_takes_only_its_size_class(queue: Queue) -> None:
    await queue.register(
        LIB,
        [NewImage("small", 1000, 1000), NewImage("big", 3000, 2000), NewImage("unknown")],
    )
    assert await _paths(queue, "w0", size_class=2) == []
    assert await _paths(queue, "w1", size_class=1) == ["big"]
    assert await _paths(queue, "w5", size_class=5) == ["unknown"]
    assert await _paths(queue, "w0", size_class=0) == ["small"]


async def test_claim_takes_only_its_cascade_step(queue: Queue) -> None:
    await register(queue, 2)
    started = await claim_and_start(queue, "w0")
    await queue.fail(started.image_id, "w0", ErrorType.OOM, "CUDA out of memory")

    at_step_0 = await claim(queue, "w1", step=0)
    at_step_1 = await claim(queue, "w2", step=1)

    assert [c.path for c in at_step_1] == [started.path]
    assert [c.path for c in at_step_0] == ["img/00001.jpg"]


async def test_a_retry_that_is_not_due_is_not_claimed(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w0")
    await queue.fail(started.image_id, "w0", ErrorType.CRASH, "died")

    assert await claim(queue, "w1") == []
    assert [lease.owner for lease in await queue.leases(LIB)] == ["w0"]

    await make_due(db)
    again = await claim(queue, "w1")
    assert [c.image_id for c in again] == [started.image_id]
    assert again[0].attempts == 1


async def test_claiming_nothing_leaves_no_lease(queue: Queue, db: asyncpg.Connection) -> None:
    assert await claim(queue, "w1") == []
    await register(queue, 1)
    assert await claim(queue, "w2", step=3) == []
    assert await queue.leases(LIB) == []
    assert await db.fetchval("SELECT count(*) FROM facescan.leases") == 0
    # the owner name is free again
    assert len(await claim(queue, "w1")) == 1


async def test_a_lease_records_its_group_and_expiry(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 3, width=3000, height=2000)
    await claim(queue, "w1", size_class=1, limit=2)

    (lease,) = await queue.leases(LIB)
    assert (lease.owner, lease.step, lease.size_class, lease.images) == ("w1", 0, 1, 2)
    left = (lease.expires_at - lease.claimed_at).total_seconds()
    assert left == pytest.approx(LEASE_S, abs=1)


async def test_claiming_again_under_a_held_owner_name_is_a_typed_error(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 4)
    first = await claim(queue, "w1", limit=2)

    with pytest.raises(errors.QueueError, match="w1"):
        await claim(queue, "w1", limit=2)

    (lease,) = await queue.leases(LIB)
    assert (lease.owner, lease.images) == ("w1", 2)
    leased = await db.fetch("SELECT id FROM facescan.images WHERE state = 'leased'")
    assert {r["id"] for r in leased} == {c.image_id for c in first}


@pytest.mark.parametrize(("limit", "lease_seconds"), [(0, 60), (-1, 60), (5, 0)])
async def test_claim_refuses_a_non_positive_limit_or_lease(
    queue: Queue, limit: int, lease_seconds: int
) -> None:
    await register(queue, 1)
    with pytest.raises(errors.InvalidArgument, match="positive limit"):
        await queue.claim(LIB, "w1", step=0, size_class=0, limit=limit, lease_seconds=lease_seconds)
    assert await queue.leases(LIB) == []


async def test_claiming_from_an_unknown_library_is_refused(queue: Queue) -> None:
    with pytest.raises(errors.UnknownLibrary, match="nowhere"):
        await claim(queue, "w1", library="nowhere")
