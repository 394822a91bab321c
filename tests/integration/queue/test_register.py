"""Registering images and libraries: idempotence, size classes, refused paths; a
registration that finds changed files (queued again, old faces deleted) and vanished
ones (marked missing, unmarked when back)."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from facescan_operator import registration
from facescan_operator.registration import RegistrationRefused, register_root
from facescan_queue import errors
from facescan_queue.models import LibraryPolicy, NewImage, Registered, StartedImage
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType

from .support import LIB, claim, claim_and_start, face, face_count, image_row, new_images, result


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


# -- a registration finds changed and vanished files (issue 14) --------------------------

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def walked(n: int, *, when: datetime = T0, grown: int = 0) -> list[NewImage]:
    """n files of one size class as a walk finds them, modified at ``when``, each
    ``grown`` bytes larger than at first."""
    return [NewImage(f"img/{i:05d}.jpg", 1000, 1000, 100_000 + i + grown, when) for i in range(n)]


def all_gone(paths: list[str]) -> list[str]:
    return list(paths)


async def _done(queue: Queue, owner: str, faces: int) -> StartedImage:
    started = await claim_and_start(queue, owner)
    await queue.complete(started.image_id, owner, result([face(i) for i in range(faces)]))
    await queue.release(owner)
    return started


async def _forgotten(db: asyncpg.Connection, image_id: int) -> bool:
    """No detection, face or failure row of the image is left."""
    return not await db.fetchval(
        "SELECT EXISTS (SELECT 1 FROM facescan.detections WHERE image_id = $1)"
        " OR EXISTS (SELECT 1 FROM facescan.faces WHERE image_id = $1)"
        " OR EXISTS (SELECT 1 FROM facescan.failures WHERE image_id = $1)",
        image_id,
    )


async def _counted_right(queue: Queue, db: asyncpg.Connection) -> None:
    """The counters agree with the images (a recount from the rows changes nothing)."""
    counted = await queue.status(LIB)
    await queue.recount(LIB)
    assert await queue.status(LIB) == counted


async def test_a_changed_file_is_queued_again_from_the_first_step_without_its_old_faces(
    queue: Queue, db: asyncpg.Connection
) -> None:
    assert await queue.register_files(LIB, walked(3)) == Registered(added=3)
    done = await _done(queue, "w1", faces=2)
    failing = await claim_and_start(queue, "w2")
    await queue.fail(failing.image_id, "w2", ErrorType.CRASH, "worker died")  # waits 60 s
    await queue.release("w2")
    untouched = await image_row(db, 3)

    again = walked(3)
    again[0] = NewImage(done.path, 1000, 1000, 123, T0)  # another size
    again[1] = NewImage(failing.path, 1000, 1000, 100_001, T0 + timedelta(seconds=1))  # re-saved

    assert await queue.register_files(LIB, again) == Registered(changed=2)

    for image_id in (done.image_id, failing.image_id):
        row = await image_row(db, image_id)
        assert (row["state"], row["step"], row["attempts"], row["error_type"]) == (
            "pending",
            0,
            0,
            None,
        )
        assert (row["face_count"], row["degraded"]) == (0, False)
        assert await _forgotten(db, image_id)
    assert (await image_row(db, done.image_id))["file_bytes"] == 123
    assert (await image_row(db, failing.image_id))["file_mtime"] == T0 + timedelta(seconds=1)
    assert await image_row(db, 3) == untouched
    status = await queue.status(LIB)
    assert (status.pending, status.done, status.retrying, status.faces) == (3, 0, 0, 0)
    await _counted_right(queue, db)
    assert len(await claim(queue, "w3")) == 3  # all runnable now, the retry too


async def test_an_image_registered_without_a_time_gets_one_and_is_not_redone(
    queue: Queue, db: asyncpg.Connection
) -> None:
    # registered before facescan kept modification times: unknown is not changed
    await queue.register_files(LIB, [NewImage("a.jpg", 1000, 1000, 5000)])
    done = await _done(queue, "w1", faces=1)

    assert await queue.register_files(LIB, [NewImage("a.jpg", 1000, 1000, 5000, T0)]) == (
        Registered()
    )
    row = await image_row(db, done.image_id)
    assert (row["state"], row["file_mtime"], await face_count(db, done.image_id)) == ("done", T0, 1)

    later = NewImage("a.jpg", 1000, 1000, 5000, T0 + timedelta(hours=1))
    assert await queue.register_files(LIB, [later]) == Registered(changed=1)
    assert await _forgotten(db, done.image_id)


async def test_a_changed_file_being_detected_is_left_to_its_worker_and_redone_next_time(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await queue.register_files(LIB, walked(2))
    first = await claim_and_start(queue, "w1", limit=2)
    before = [await image_row(db, i) for i in (1, 2)]

    assert await queue.register_files(LIB, walked(2, grown=7)) == Registered(deferred=2)

    assert [await image_row(db, i) for i in (1, 2)] == before  # the worker's, untouched
    await queue.complete(first.image_id, "w1", result([face()]))  # its commit still lands
    second = await queue.start_next("w1")
    assert second is not None
    await queue.complete(second.image_id, "w1", result())
    await queue.release("w1")
    assert (await queue.status(LIB)).done == 2

    assert await queue.register_files(LIB, walked(2, grown=7)) == Registered(changed=2)
    assert await queue.register_files(LIB, walked(2, grown=7)) == Registered()
    status = await queue.status(LIB)
    assert (status.pending, status.done, status.faces) == (2, 0, 0)
    assert await _forgotten(db, first.image_id)


async def test_vanished_files_are_marked_missing_never_claimed_counted_and_back_when_seen(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await queue.register_files(LIB, walked(3), gone=all_gone)
    done = await _done(queue, "w1", faces=2)  # img/00000
    (leased,) = await claim(queue, "w2", limit=1)  # img/00001, being detected

    only_last = walked(3)[2:]
    assert await queue.register_files(LIB, only_last, gone=all_gone) == Registered(missing=1)

    assert (await image_row(db, done.image_id))["missing_since"] is not None
    assert (await image_row(db, leased.image_id))["missing_since"] is None  # its worker's
    status = await queue.status(LIB)
    assert (status.images, status.missing, status.done, status.leased, status.pending) == (
        3,
        1,
        0,
        1,
        1,
    )
    assert status.faces == 2  # a missing image keeps its faces
    assert status.as_json()["missing"] == 1
    await queue.release("w2")
    assert await queue.register_files(LIB, only_last, gone=all_gone) == Registered(missing=1)
    await _counted_right(queue, db)

    groups = await queue.runnable_groups(LIB, cap=9)
    assert [(g.step, g.size_class, g.runnable) for g in groups] == [(0, 0, 1)]
    assert [c.path for c in await claim(queue, "w3")] == ["img/00002.jpg"]
    await queue.release("w3")
    assert await queue.next_retry(LIB) is None

    assert await queue.register_files(LIB, walked(3), gone=all_gone) == Registered(returned=2)
    row = await image_row(db, done.image_id)
    assert (row["state"], row["missing_since"], await face_count(db, done.image_id)) == (
        "done",
        None,
        2,
    )
    status = await queue.status(LIB)
    assert (status.missing, status.done, status.pending, status.faces) == (0, 1, 2, 2)
    assert "missing" not in status.as_json()
    await _counted_right(queue, db)


async def test_a_missing_file_back_changed_is_unmarked_and_redone(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await queue.register_files(LIB, walked(2), gone=all_gone)
    done = await _done(queue, "w1", faces=1)
    await queue.register_files(LIB, walked(2)[1:], gone=all_gone)

    back = await queue.register_files(LIB, walked(2, grown=1), gone=all_gone)

    assert back == Registered(changed=2, returned=1)
    row = await image_row(db, done.image_id)
    assert (row["state"], row["missing_since"]) == ("pending", None)
    assert await _forgotten(db, done.image_id)


async def test_only_paths_confirmed_gone_are_marked_missing(queue: Queue) -> None:
    await queue.register_files(LIB, walked(3))
    asked: list[list[str]] = []

    def none_gone(paths: list[str]) -> list[str]:
        asked.append(paths)
        return []

    assert await queue.register_files(LIB, walked(3)[:1], gone=none_gone) == Registered()
    assert asked == [["img/00001.jpg", "img/00002.jpg"]]
    assert (await queue.status(LIB)).missing == 0


# -- the walk of a library root ----------------------------------------------------------


def _files(root: Path, *relatives: str) -> None:
    for relative in relatives:
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(b"not really a photo")


def _unreadable(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    """Opening the directory ``name`` (as the walk does) fails with EACCES."""
    real = os.open

    def guarded(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if os.path.basename(str(path)) == name and flags & os.O_DIRECTORY:
            raise PermissionError(13, "Permission denied")
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(registration.os, "open", guarded)


async def test_a_walk_that_failed_partway_marks_nothing_missing(
    queue: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _files(tmp_path, "a.jpg", "b.jpg", "locked/c.jpg")
    assert (await register_root(queue, LIB, tmp_path)).registered == Registered(added=3)
    (tmp_path / "a.jpg").unlink()
    _unreadable(monkeypatch, "locked")

    partial = await register_root(queue, LIB, tmp_path)

    assert partial.unreadable == ["locked: Permission denied"]
    assert partial.registered == Registered()
    assert (await queue.status(LIB)).missing == 0
    monkeypatch.undo()
    complete = await register_root(queue, LIB, tmp_path)
    assert (complete.unreadable, complete.registered) == ([], Registered(missing=1))


async def test_an_unreadable_or_empty_root_is_refused_and_marks_nothing(
    queue: Queue, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "mnt"
    _files(root, "a.jpg", "sub/b.jpg")
    await register_root(queue, LIB, root)
    _unreadable(monkeypatch, "mnt")
    with pytest.raises(RegistrationRefused, match="cannot read the library root"):
        await register_root(queue, LIB, root)
    monkeypatch.undo()
    for path in ("a.jpg", "sub/b.jpg"):
        (root / path).unlink()  # or the volume is not mounted: it looks the same

    with pytest.raises(RegistrationRefused, match="has 2 registered images: is the volume"):
        await register_root(queue, LIB, root)

    assert (await queue.status(LIB)).missing == 0
    emptied = await register_root(queue, LIB, root, allow_empty=True)
    assert emptied.registered == Registered(missing=2)
    # every image missing: an empty root is no longer refused
    assert (await register_root(queue, LIB, root)).registered == Registered()


async def test_a_registered_path_the_walk_skips_is_not_missing_while_its_file_is_there(
    queue: Queue, tmp_path: Path
) -> None:
    # e.g. registered by import-legacy under a hidden directory, which the walk skips
    _files(tmp_path, "a.jpg", ".thumbnails/t.jpg")
    await queue.register_files(LIB, [NewImage(".thumbnails/t.jpg")])

    assert (await register_root(queue, LIB, tmp_path)).registered == Registered(added=1)
    (tmp_path / ".thumbnails" / "t.jpg").unlink()
    assert (await register_root(queue, LIB, tmp_path)).registered == Registered(missing=1)
