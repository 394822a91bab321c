"""Status from the counters equals the truth in the tables, whatever happened before."""

from __future__ import annotations

import random

import asyncpg
import pytest

from facescan_queue.models import LibraryPolicy, NewImage, QueueStatus
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType

from .support import LIB, claim, claim_and_start, expire, face, make_due, register, result, truth

OTHER = "other"


async def _runnable_truth(db: asyncpg.Connection, library: str, cap: int) -> list[tuple[int, ...]]:
    rows = await db.fetch(
        "SELECT step, size_class, least(count(*), $2)::int AS n FROM facescan.images"
        " WHERE library = $1 AND state = 'pending' AND next_attempt_at <= now()"
        " GROUP BY step, size_class ORDER BY step, size_class",
        library,
        cap,
    )
    return [tuple(r) for r in rows]


async def _assert_counts(queue: Queue, db: asyncpg.Connection) -> None:
    for library in (LIB, OTHER):
        assert await queue.status(library) == await truth(db, library)
        groups = await queue.runnable_groups(library, cap=7)
        assert [(g.step, g.size_class, g.runnable) for g in groups] == await _runnable_truth(
            db, library, 7
        )


class _Driver:
    """Random but valid operations on the queue, as several workers would make them."""

    def __init__(self, queue: Queue, db: asyncpg.Connection, seed: int) -> None:
        self.queue, self.db, self.rng = queue, db, random.Random(seed)
        self.started: dict[str, int | None] = {}  # owner -> image in progress
        self.libraries: dict[str, str] = {}  # owner -> library
        self.registered = 0
        self.owners = 0

    async def step(self) -> None:
        ops = [
            (self.register, 3),
            (self.claim, 3),
            (self.start, 8),
            (self.complete, 6),
            (self.fail, 6),
            (self.step_down, 1),
            (self.release, 3),
            (self.reclaim, 1),
            (self.requeue, 1),
            (self.rescan, 1),
            (self.make_due, 2),
            (self.compact, 1),
        ]
        op = self.rng.choices([o for o, _ in ops], weights=[w for _, w in ops])[0]
        await op()

    async def register(self) -> None:
        library = LIB if self.rng.random() < 0.8 else OTHER
        images = []
        for _ in range(self.rng.randint(1, 8)):
            n = self.registered = self.registered + 1
            if self.rng.random() < 0.15:  # an existing path again
                n = self.rng.randint(1, n)
            dims = self.rng.choice([(800, 600), (3000, 2000), (5000, 3000), (None, None)])
            images.append(NewImage(f"p/{n}.jpg", *dims))
        await self.queue.register(library, images, priority=self.rng.choice([0, 0, 1, 5]))

    async def claim(self) -> None:
        library = LIB if self.rng.random() < 0.8 else OTHER
        groups = await self.queue.runnable_groups(library, cap=50)
        if not groups:
            return
        group = self.rng.choice(groups)
        self.owners += 1
        owner = f"w{self.owners}"
        claimed = await self.queue.claim(
            library,
            owner,
            step=group.step,
            size_class=group.size_class,
            limit=self.rng.randint(1, 6),
            lease_seconds=600,
        )
        assert claimed
        self.started[owner], self.libraries[owner] = None, library

    def _owner(self, *, started: bool | None) -> str | None:
        owners = [
            o
            for o, image in self.started.items()
            if started is None or (image is not None) == started
        ]
        return self.rng.choice(sorted(owners)) if owners else None

    async def start(self) -> None:
        owner = self._owner(started=False)
        if owner is None:
            await self.claim()
            return
        started = await self.queue.start_next(owner)
        if started is None:
            await self.queue.release(owner)
            self._forget(owner)
        else:
            self.started[owner] = started.image_id

    async def complete(self) -> None:
        owner = self._owner(started=True)
        if owner is None:
            await self.start()
            return
        faces = [
            face(i, dims=self.rng.choice([128, 512])) for i in range(self.rng.choice([0, 1, 3]))
        ]
        image_id = self.started[owner]
        assert image_id is not None
        await self.queue.complete(image_id, owner, result(faces))
        self.started[owner] = None

    async def fail(self) -> None:
        owner = self._owner(started=True)
        if owner is None:
            await self.start()
            return
        image_id = self.started[owner]
        assert image_id is not None
        await self.queue.fail(image_id, owner, self.rng.choice(list(ErrorType)), "random")
        self.started[owner] = None

    async def step_down(self) -> None:
        owner = self._owner(started=True)
        if owner is not None:
            image_id = self.started[owner]
            assert image_id is not None
            await self.queue.step_down(image_id, owner, "oom")

    async def release(self) -> None:
        owner = self._owner(started=None)
        if owner is not None:
            charge = self.rng.choice([None, ErrorType.OOM, ErrorType.CRASH])
            await self.queue.release(owner, charge=charge)
            self._forget(owner)

    async def reclaim(self) -> None:
        owner = self._owner(started=None)
        if owner is not None:
            await expire(self.db, owner)
            reclaimed = await self.queue.reclaim_expired()
            assert [r.owner for r in reclaimed] == [owner]
            self._forget(owner)

    async def requeue(self) -> None:
        await self.queue.requeue(
            self.rng.choice([LIB, OTHER]),
            only_dead=self.rng.random() < 0.5,
            error_type=self.rng.choice([None, None, ErrorType.CRASH, ErrorType.DECODE]),
        )

    async def rescan(self) -> None:
        await self.queue.rescan(LIB, only_degraded=self.rng.random() < 0.9)

    async def make_due(self) -> None:
        await make_due(self.db)

    async def compact(self) -> None:
        await self.queue.compact_counts()

    def _forget(self, owner: str) -> None:
        del self.started[owner], self.libraries[owner]


@pytest.mark.parametrize("seed", [1, 2])
async def test_status_equals_the_truth_after_a_random_mix_of_operations(
    queue: Queue, db: asyncpg.Connection, seed: int
) -> None:
    await queue.ensure_library(OTHER)
    await queue.ensure_library(LIB, LibraryPolicy(max_attempts=2))
    driver = _Driver(queue, db, seed)
    reached: set[str] = set()
    for i in range(350):
        await driver.step()
        if i % 25 == 24:
            await _assert_counts(queue, db)
            counts = (await queue.status(LIB)).as_json()
            reached |= {k for k, v in counts.items() if v and k != "by_error_type"}

    assert await queue.status(LIB) == await truth(db, LIB)
    # the mix went through every kind of state
    assert reached == {
        "images",
        "pending",
        "leased",
        "done",
        "degraded",
        "retrying",
        "dead",
        "faces",
    }

    assert await queue.compact_counts() > 0
    await _assert_counts(queue, db)
    shards = await db.fetchval(
        "SELECT count(*) FROM facescan.image_counts WHERE shard <> 0 OR images = 0"
    )
    assert shards == 0

    await queue.recount(LIB)
    await queue.recount(OTHER)
    await _assert_counts(queue, db)


async def test_recount_repairs_counters_that_drifted(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 4)
    started = await claim_and_start(queue, "w1")
    await queue.complete(started.image_id, "w1", result([face()]))
    await db.execute("UPDATE facescan.image_counts SET images = images + 10")
    assert await queue.status(LIB) != await truth(db)

    await queue.recount(LIB)

    assert await queue.status(LIB) == await truth(db)


async def test_status_of_an_empty_or_unknown_library_is_all_zero(queue: Queue) -> None:
    assert await queue.status(LIB) == QueueStatus()
    assert await queue.status("nowhere") == QueueStatus()


async def test_status_counts_each_state(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 6)
    done = await claim_and_start(queue, "w1")
    await queue.complete(done.image_id, "w1", result([face(), face(1)]))
    failed = await claim_and_start(queue, "w2")
    await queue.fail(failed.image_id, "w2", ErrorType.DECODE, "bad")
    await claim(queue, "w3", limit=2)

    status = await queue.status(LIB)

    assert status.as_json() == {
        "images": 6,
        "pending": 3,
        "leased": 2,
        "done": 1,
        "degraded": 0,
        "retrying": 1,
        "dead": 0,
        "faces": 2,
        "by_error_type": {"decode": 1},
    }
    assert status == await truth(db)


async def test_runnable_groups_count_due_images_up_to_the_cap(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 5)
    await register(queue, 2, "big", width=3000, height=2000)
    started = await claim_and_start(queue, "w1", size_class=1)
    await queue.fail(started.image_id, "w1", ErrorType.CRASH, "x")  # not due for 60 s
    oom = await claim_and_start(queue, "w2")
    await queue.fail(oom.image_id, "w2", ErrorType.OOM, "x")  # step 1, due now

    groups = await queue.runnable_groups(LIB, cap=3)

    assert [(g.step, g.size_class, g.runnable) for g in groups] == [(0, 0, 3), (0, 1, 1), (1, 0, 1)]
    assert await queue.runnable_groups(OTHER, cap=3) == []


async def test_attempts_finished_between_two_clocks_are_counted_once_by_outcome(
    queue: Queue,
) -> None:
    """What the operator's facescan_attempts_total adds tick after tick: each finished
    attempt exactly once, including one that was open across a tick."""
    await register(queue, 4)
    first = await queue.attempt_clock(LIB)
    done = await claim_and_start(queue, "w1")
    await queue.complete(done.image_id, "w1", result([face()]))
    failed = await claim_and_start(queue, "w2")
    await queue.fail(failed.image_id, "w2", ErrorType.DECODE, "truncated")
    slow = await claim_and_start(queue, "w3")  # still open at the next clock
    second = await queue.attempt_clock(LIB)
    assert second.from_id == slow.attempt_id
    assert await queue.attempt_outcomes(LIB, first, second) == {
        ("done", None): 1,
        ("failed", "decode"): 1,
    }

    await queue.release("w3", charge=ErrorType.CRASH, error="pod gone")
    third = await queue.attempt_clock(LIB)
    assert await queue.attempt_outcomes(LIB, second, third) == {("failed", "crash"): 1}
    assert await queue.attempt_outcomes(LIB, third, await queue.attempt_clock(LIB)) == {}
