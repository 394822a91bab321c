"""Registering images and libraries: idempotence, size classes, refused paths."""

from __future__ import annotations

import asyncpg
import pytest

from facescan_queue import errors
from facescan_queue.models import LibraryPolicy, NewImage
from facescan_queue.repository import Queue

from .support import LIB, claim, new_images


async def test_registering_the_same_paths_twice_adds_nothing_and_keeps_state(
    queue: Queue, db: asyncpg.Connection
) -> None:
    assert await queue.register(LIB, new_images(5)) == 5
    claimed = await claim(queue, "w1", limit=2)
    before = await db.fetch("SELECT * FROM facescan.images ORDER BY id")

    again = await queue.register(LIB, [*new_images(5), NewImage("img/new.jpg")], priority=9)

    assert again == 1
    after = await db.fetch("SELECT * FROM facescan.images ORDER BY id")
    assert after[:5] == before
    assert sum(r["state"] == "leased" for r in after) == len(claimed) == 2
    assert (await queue.status(LIB)).images == 6


SIZE_CLASSES = [
    (1000, 2000, 0),  # exactly 2 MP
    (1000, 2001, 1),
    (4000, 2000, 1),  # exactly 8 MP
    (4000, 2001, 2),
    (4000, 4000, 2),  # exactly 16 MP
    (4000, 4001, 3),
    (8000, 4000, 3),  # exactly 32 MP
    (8000, 4001, 4),
    (60000, 60000, 4),  # beyond int32 when multiplied
    (None, 3000, 5),
    (3000, None, 5),
    (None, None, 5),
]


async def test_size_class_follows_megapixels(queue: Queue, db: asyncpg.Connection) -> None:
    images = [NewImage(f"{i}.jpg", w, h) for i, (w, h, _) in enumerate(SIZE_CLASSES)]
    await queue.register(LIB, images)

    stored = await db.fetch("SELECT width, height, size_class FROM facescan.images ORDER BY id")
    assert [tuple(r) for r in stored] == SIZE_CLASSES
    for w, h, size_class in SIZE_CLASSES:
        assert await db.fetchval("SELECT facescan.size_class($1, $2)", w, h) == size_class


async def test_a_path_outside_the_library_refuses_the_whole_call(
    queue: Queue, db: asyncpg.Connection
) -> None:
    for bad in ["/etc/passwd", "..", "../up.jpg", "a/../b.jpg", "a/..", ""]:
        batch = [NewImage("ok/1.jpg"), NewImage(bad), NewImage("ok/2.jpg")]

        with pytest.raises(errors.InvalidArgument, match="relative to the library root"):
            await queue.register(LIB, batch)

        assert await db.fetchval("SELECT count(*) FROM facescan.images") == 0, bad


async def test_dots_inside_a_name_are_a_relative_path(queue: Queue) -> None:
    assert await queue.register(LIB, [NewImage("a..b/c...jpg"), NewImage("..x/y.jpg")]) == 2


async def test_a_refused_path_in_a_large_call_registers_nothing(
    queue: Queue, db: asyncpg.Connection
) -> None:
    # the client sends large calls in chunks of 10,000: a bad path in the second chunk
    # must not leave the first one registered
    batch = [*new_images(10_000), NewImage("/absolute.jpg")]

    with pytest.raises(errors.InvalidArgument):
        await queue.register(LIB, batch)

    assert await db.fetchval("SELECT count(*) FROM facescan.images") == 0


async def test_registering_into_an_unknown_library_is_a_typed_error(
    queue: Queue, db: asyncpg.Connection
) -> None:
    with pytest.raises(errors.UnknownLibrary, match="nowhere"):
        await queue.register("nowhere", new_images(3))
    assert await db.fetchval("SELECT count(*) FROM facescan.images") == 0


async def test_priority_is_stored_per_call(queue: Queue, db: asyncpg.Connection) -> None:
    await queue.register(LIB, [NewImage("low.jpg")])
    await queue.register(LIB, [NewImage("high.jpg")], priority=5)
    rows = {
        r["path"]: r["priority"]
        for r in await db.fetch("SELECT path, priority FROM facescan.images")
    }
    assert rows == {"low.jpg": 0, "high.jpg": 5}


async def test_ensure_library_is_idempotent_and_updates_only_given_fields(
    queue: Queue,
) -> None:
    default = await queue.ensure_library(LIB)
    assert [m for m, _ in default.cascade] == ["cnn"] * 5 + ["hog"]
    assert [s for _, s in default.cascade] == pytest.approx([1.0, 0.75, 0.5, 0.33, 0.25, 1.0])
    assert (default.backoff_base_s, default.backoff_cap_s, default.max_attempts) == (60, 3600, 5)

    changed = await queue.ensure_library(LIB, LibraryPolicy(max_attempts=3))
    assert changed.max_attempts == 3
    assert changed.cascade == default.cascade
    assert (await queue.ensure_library(LIB)).max_attempts == 3


@pytest.mark.parametrize(
    "policy",
    [
        LibraryPolicy(cascade_models=("yolo",), cascade_scales=(1.0,)),
        LibraryPolicy(cascade_models=("cnn", "hog"), cascade_scales=(1.0,)),
        LibraryPolicy(max_attempts=0),
    ],
)
async def test_an_invalid_library_policy_is_refused_with_a_typed_error(
    queue: Queue, policy: LibraryPolicy
) -> None:
    with pytest.raises(errors.InvalidArgument):
        await queue.ensure_library(LIB, policy)
    assert (await queue.ensure_library(LIB)).max_attempts == 5
