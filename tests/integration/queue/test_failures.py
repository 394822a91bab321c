"""Failing an image: the policy of each failure type, the failure row, the legacy view."""

from __future__ import annotations

import asyncpg
import pytest

from facescan_queue.models import FailureOutcome, LibraryPolicy
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType, ImageState

from .support import (
    LIB,
    claim,
    claim_and_start,
    delay_of,
    face,
    failure_row,
    image_row,
    make_due,
    register,
    result,
    seconds_until,
)


async def _fail_once(
    queue: Queue,
    db: asyncpg.Connection,
    owner: str,
    error_type: ErrorType,
    *,
    step: int = 0,
    size_class: int = 0,
    error: str = "it failed",
) -> FailureOutcome:
    """Makes the one image runnable, claims it at ``step``, starts it and fails it."""
    await make_due(db)
    started = await claim_and_start(queue, owner, step=step, size_class=size_class)
    outcome = await queue.fail(started.image_id, owner, error_type, error)
    await queue.release(owner)
    return outcome


async def _image_id(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT id FROM facescan.images"))


@pytest.mark.parametrize("error_type", [ErrorType.CRASH, ErrorType.PERMISSION, ErrorType.INTERNAL])
async def test_backoff_doubles_from_60_s_and_the_fifth_failure_is_dead(
    queue: Queue, db: asyncpg.Connection, error_type: ErrorType
) -> None:
    await register(queue, 1)
    image_id = -1
    for attempt, delay in enumerate([60, 120, 240, 480], start=1):
        outcome = await _fail_once(queue, db, f"w{attempt}", error_type)
        image_id = await _image_id(db)
        assert (outcome.state, outcome.step) == (ImageState.PENDING, 0)
        assert await seconds_until(db, outcome.next_attempt_at) == pytest.approx(delay, abs=2)
        assert await delay_of(db, image_id) == pytest.approx(delay, abs=2)
        row = await image_row(db, image_id)
        assert (row["state"], row["attempts"], row["error_type"]) == (
            "pending",
            attempt,
            error_type,
        )
        failure = await failure_row(db, image_id)
        assert failure is not None
        assert (failure["attempts"], failure["dead"]) == (attempt, False)
        assert await seconds_until(db, failure["next_retry_at"]) == pytest.approx(delay, abs=2)

    outcome = await _fail_once(queue, db, "w5", error_type)

    assert outcome.state == ImageState.DEAD
    row = await image_row(db, image_id)
    assert (row["state"], row["attempts"]) == ("dead", 5)
    failure = await failure_row(db, image_id)
    assert failure is not None
    assert (failure["attempts"], failure["dead"], failure["next_retry_at"]) == (5, True, None)
    await make_due(db)
    assert await claim(queue, "w6") == []
    status = await queue.status(LIB)
    assert (status.dead, status.retrying, status.by_error_type) == (1, 0, {error_type: 1})


async def test_backoff_is_capped_at_3600_s(queue: Queue, db: asyncpg.Connection) -> None:
    await queue.ensure_library(LIB, LibraryPolicy(backoff_base_s=1000))
    await register(queue, 1)
    delays = []
    for attempt in range(1, 5):
        outcome = await _fail_once(queue, db, f"w{attempt}", ErrorType.CRASH)
        delays.append(round(await seconds_until(db, outcome.next_attempt_at), -1))
    assert delays == [1000, 2000, 3600, 3600]
    assert (await _fail_once(queue, db, "w5", ErrorType.CRASH)).state == ImageState.DEAD


async def test_max_attempts_comes_from_the_library_policy(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await queue.ensure_library(LIB, LibraryPolicy(max_attempts=2))
    await register(queue, 1)
    assert (await _fail_once(queue, db, "w1", ErrorType.CRASH)).state == ImageState.PENDING
    assert (await _fail_once(queue, db, "w2", ErrorType.CRASH)).state == ImageState.DEAD


async def test_a_custom_multiplier_and_cap_shape_the_backoff(
    queue: Queue, db: asyncpg.Connection
) -> None:
    policy = LibraryPolicy(backoff_base_s=10, backoff_multiplier=3, backoff_cap_s=100)
    await queue.ensure_library(LIB, policy)
    await register(queue, 1)
    delays = []
    for attempt in range(1, 5):
        outcome = await _fail_once(queue, db, f"w{attempt}", ErrorType.CRASH)
        delays.append(round(await seconds_until(db, outcome.next_attempt_at)))
    assert delays == [10, 30, 90, 100]


@pytest.mark.parametrize("error_type", [ErrorType.OOM, ErrorType.TIMEOUT])
async def test_oom_culprit_advances_one_step_now_without_burning_an_attempt(
    queue: Queue, db: asyncpg.Connection, error_type: ErrorType
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")

    outcome = await queue.fail(started.image_id, "w1", error_type, "out of memory")

    assert (outcome.state, outcome.step) == (ImageState.PENDING, 1)
    assert abs(await seconds_until(db, outcome.next_attempt_at)) < 2
    row = await image_row(db, started.image_id)
    assert (row["state"], row["step"], row["attempts"], row["error_type"]) == (
        "pending",
        1,
        0,
        error_type,
    )
    assert await claim(queue, "w2", step=0) == []
    assert [c.image_id for c in await claim(queue, "w3", step=1)] == [started.image_id]


async def test_oom_walks_the_cascade_then_burns_attempts_at_the_last_step(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    for step in range(5):
        outcome = await _fail_once(queue, db, f"s{step}", ErrorType.OOM, step=step)
        assert (outcome.state, outcome.step) == (ImageState.PENDING, step + 1)
    image_id = await _image_id(db)
    assert (await image_row(db, image_id))["attempts"] == 0

    for attempt, delay in enumerate([60, 120, 240, 480], start=1):
        started = await claim_and_start(queue, f"h{attempt}", step=5)
        assert (started.model, started.scale) == ("hog", 1.0)
        outcome = await queue.fail(started.image_id, f"h{attempt}", ErrorType.OOM, "oom")
        assert (outcome.state, outcome.step) == (ImageState.PENDING, 5)
        assert await seconds_until(db, outcome.next_attempt_at) == pytest.approx(delay, abs=2)
        assert (await image_row(db, image_id))["attempts"] == attempt
        await make_due(db)

    assert (await _fail_once(queue, db, "h5", ErrorType.OOM, step=5)).state == ImageState.DEAD
    failure = await failure_row(db, image_id)
    assert failure is not None
    # every failure is counted, the five step-downs included
    assert (failure["attempts"], failure["last_model"], failure["dead"]) == (10, "hog", True)


async def test_a_timeout_at_the_last_step_burns_an_attempt(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await queue.ensure_library(LIB, LibraryPolicy(cascade_models=("hog",), cascade_scales=(1.0,)))
    await register(queue, 1)
    outcome = await _fail_once(queue, db, "w1", ErrorType.TIMEOUT)
    assert (outcome.state, outcome.step) == (ImageState.PENDING, 0)
    assert await seconds_until(db, outcome.next_attempt_at) == pytest.approx(60, abs=2)
    assert (await image_row(db, await _image_id(db)))["attempts"] == 1


async def test_decode_is_dead_after_two_attempts(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 1)
    first = await _fail_once(queue, db, "w1", ErrorType.DECODE, error="truncated JPEG")
    assert first.state == ImageState.PENDING
    assert await seconds_until(db, first.next_attempt_at) == pytest.approx(60, abs=2)

    second = await _fail_once(queue, db, "w2", ErrorType.DECODE, error="truncated JPEG")

    assert second.state == ImageState.DEAD
    failure = await failure_row(db, await _image_id(db))
    assert failure is not None
    assert (failure["attempts"], failure["error_type"], failure["dead"]) == (2, "decode", True)


async def test_missing_waits_at_least_an_hour(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 1)
    for attempt in range(1, 5):
        outcome = await _fail_once(queue, db, f"w{attempt}", ErrorType.MISSING)
        assert outcome.state == ImageState.PENDING
        assert await seconds_until(db, outcome.next_attempt_at) == pytest.approx(3600, abs=2)
    assert (await _fail_once(queue, db, "w5", ErrorType.MISSING)).state == ImageState.DEAD


async def test_unavailable_burns_nothing_and_writes_no_failure(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    for attempt in range(1, 8):  # more than max_attempts: never dead
        outcome = await _fail_once(queue, db, f"w{attempt}", ErrorType.UNAVAILABLE)
        assert (outcome.state, outcome.step) == (ImageState.PENDING, 0)
        assert await seconds_until(db, outcome.next_attempt_at) == pytest.approx(60, abs=2)

    image_id = await _image_id(db)
    row = await image_row(db, image_id)
    assert (row["state"], row["attempts"], row["error_type"]) == ("pending", 0, None)
    assert await failure_row(db, image_id) is None
    assert await claim(queue, "w9") == []  # back to pending, but only after the delay
    recent = await queue.recent_outcomes(LIB, window=100)
    assert (recent.finished, recent.unavailable, recent.failed) == (7, 7, 7)
    assert (await queue.status(LIB)).retrying == 0


async def test_unavailable_on_one_image_while_others_succeed_is_charged_after_a_bound(
    queue: Queue, db: asyncpg.Connection
) -> None:
    """An image whose file always fails to read (an I/O error: `unavailable`) while the
    library's other images succeed retries uncharged unavailable_grace (5) times, then
    each failure is charged until it is dead with its reason kept: not for ever, one
    attempt row each time."""
    await register(queue, 2)
    good = await claim_and_start(queue, "ok")
    await queue.complete(good.image_id, "ok", result([face()]))
    await queue.release("ok")
    bad = int(await db.fetchval("SELECT id FROM facescan.images WHERE state = 'pending'"))

    for attempt in range(1, 6):  # the grace: as during an outage
        outcome = await _fail_once(queue, db, f"u{attempt}", ErrorType.UNAVAILABLE)
        assert await seconds_until(db, outcome.next_attempt_at) == pytest.approx(60, abs=2)
        row = await image_row(db, bad)
        assert (row["state"], row["attempts"], row["unavailable_count"]) == ("pending", 0, attempt)
        assert await failure_row(db, bad) is None
    for attempt in range(1, 5):  # then charged as any failure: backoff 60 s x 2^(n-1)
        outcome = await _fail_once(queue, db, f"c{attempt}", ErrorType.UNAVAILABLE)
        assert outcome.state == ImageState.PENDING
        assert await seconds_until(db, outcome.next_attempt_at) == pytest.approx(
            60 * 2 ** (attempt - 1), abs=2
        )
        row = await image_row(db, bad)
        assert (row["attempts"], row["error_type"]) == (attempt, "unavailable")
    outcome = await _fail_once(queue, db, "c5", ErrorType.UNAVAILABLE, error="EIO")

    assert outcome.state == ImageState.DEAD
    failure = await failure_row(db, bad)
    assert failure is not None
    assert (failure["error_type"], failure["dead"], failure["last_error"]) == (
        "unavailable",
        True,
        "EIO",
    )
    status = await queue.status(LIB)
    assert (status.done, status.dead, status.by_error_type) == (1, 1, {"unavailable": 1})
    await make_due(db)
    assert await claim(queue, "after") == []
    attempts = await db.fetchval("SELECT count(*) FROM facescan.attempts WHERE image_id = $1", bad)
    assert attempts == 10  # grace + max_attempts, then no more

    # requeued by hand, it has its grace again
    assert await queue.requeue(LIB, only_dead=True) == 1
    await _fail_once(queue, db, "again", ErrorType.UNAVAILABLE)
    row = await image_row(db, bad)
    assert (row["state"], row["attempts"], row["unavailable_count"]) == ("pending", 0, 1)


async def test_unavailable_during_an_outage_is_not_counted_against_the_bound(
    queue: Queue, db: asyncpg.Connection
) -> None:
    """Once the library's last 20 finished attempts hold no success (an outage), further
    `unavailable` failures count nothing, however many."""
    await register(queue, 2)
    good = await claim_and_start(queue, "ok")
    await queue.complete(good.image_id, "ok", result())
    await queue.release("ok")
    bad = int(await db.fetchval("SELECT id FROM facescan.images WHERE state = 'pending'"))
    await db.execute(
        "INSERT INTO facescan.attempts (image_id, library, worker, step, model, scale,"
        " finished_at, outcome, error_type)"
        " SELECT $1, $2, 'elsewhere', 0, 'cnn', 1, now(), 'failed', 'unavailable'"
        " FROM generate_series(1, 20)",
        good.image_id,
        LIB,
    )

    for attempt in range(1, 8):
        outcome = await _fail_once(queue, db, f"u{attempt}", ErrorType.UNAVAILABLE)
        assert outcome.state == ImageState.PENDING
    row = await image_row(db, bad)
    assert (row["attempts"], row["unavailable_count"], row["error_type"]) == (0, 0, None)
    assert await failure_row(db, bad) is None


async def test_unavailable_keeps_the_failure_an_image_already_had(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    await _fail_once(queue, db, "w1", ErrorType.DECODE)
    await _fail_once(queue, db, "w2", ErrorType.UNAVAILABLE)

    row = await image_row(db, await _image_id(db))
    assert (row["attempts"], row["error_type"]) == (1, "decode")
    failure = await failure_row(db, row["id"])
    assert failure is not None
    assert (failure["attempts"], failure["error_type"]) == (1, "decode")


async def test_the_failure_row_records_what_happened(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 1, width=4000, height=3000)
    image_id = await _image_id(db)
    await _fail_once(queue, db, "w1", ErrorType.OOM, size_class=2, error="CUDA out of memory")

    first = await failure_row(db, image_id)
    assert first is not None
    assert dict(first) | {"first_failure_at": None, "last_failure_at": None} == {
        "image_id": image_id,
        "attempts": 1,
        "error_type": "oom",
        "last_error": "CUDA out of memory",
        "original_width": 4000,
        "original_height": 3000,
        "file_bytes": 100_000,
        "last_scale": 1.0,
        "last_model": "cnn",
        "first_failure_at": None,
        "last_failure_at": None,
        "next_retry_at": first["next_retry_at"],
        "dead": False,
    }
    assert abs(await seconds_until(db, first["next_retry_at"])) < 2

    started = await claim_and_start(queue, "w2", step=1, size_class=2)
    await queue.fail(
        started.image_id,
        "w2",
        ErrorType.CRASH,
        "segfault",
        original_width=4032,
        original_height=3024,
        file_bytes=5,
    )

    second = await failure_row(db, image_id)
    assert second is not None
    assert (second["attempts"], second["error_type"], second["last_error"]) == (
        2,
        "crash",
        "segfault",
    )
    assert (second["last_model"], second["last_scale"]) == ("cnn", 0.75)
    assert (second["original_width"], second["original_height"], second["file_bytes"]) == (
        4032,
        3024,
        5,
    )
    assert second["first_failure_at"] == first["first_failure_at"]
    assert second["last_failure_at"] > first["last_failure_at"]
    listed = await queue.failures(LIB)
    assert [(f.path, f.error_type, f.attempts, f.dead, f.last_scale) for f in listed] == [
        ("img/00000.jpg", ErrorType.CRASH, 2, False, 0.75)
    ]


async def test_the_legacy_view_has_the_legacy_columns_and_values(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1, width=640, height=480)
    image_id = await _image_id(db)
    await _fail_once(queue, db, "w1", ErrorType.DECODE, error="bad huffman table")
    await _fail_once(queue, db, "w2", ErrorType.DECODE, error="bad huffman table")

    rows = await db.fetch("SELECT * FROM facescan.face_detection_failures")
    failure = await failure_row(db, image_id)
    assert failure is not None
    assert len(rows) == 1
    assert dict(rows[0]) == {
        "id": image_id,
        "image_path": "img/00000.jpg",
        "retry_count": 2,
        "last_error": "bad huffman table",
        "last_error_type": "decode",
        "original_width": 640,
        "original_height": 480,
        "file_size_bytes": 100_000,
        "last_attempted_scale": 1.0,
        "first_failure_at": failure["first_failure_at"],
        "last_failure_at": failure["last_failure_at"],
        "next_retry_after": None,
        "permanently_failed": True,
    }
    assert list(rows[0].keys()) == [
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
    ]


async def test_an_in_process_step_down_counts_as_a_failed_attempt(
    queue: Queue, db: asyncpg.Connection
) -> None:
    # failures.attempts is documented as "every failed attempt", and fail(oom) counts
    # the step-downs it makes: an in-process step-down must count the same way
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")
    await queue.step_down(started.image_id, "w1", "CUDA out of memory")
    await queue.fail(started.image_id, "w1", ErrorType.CRASH, "segfault")

    failed = await db.fetchval("SELECT count(*) FROM facescan.attempts WHERE outcome = 'failed'")
    failure = await failure_row(db, started.image_id)
    assert failure is not None
    assert failed == 2
    assert failure["attempts"] == failed


async def test_a_successful_retry_clears_the_failure(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 1)
    await _fail_once(queue, db, "w1", ErrorType.CRASH)
    await _fail_once(queue, db, "w2", ErrorType.OOM)
    image_id = await _image_id(db)
    assert (await queue.status(LIB)).retrying == 1

    await make_due(db)
    started = await claim_and_start(queue, "w3", step=1)
    await queue.complete(started.image_id, "w3", result([face()]))

    assert await failure_row(db, image_id) is None
    assert await db.fetchval("SELECT count(*) FROM facescan.face_detection_failures") == 0
    row = await image_row(db, image_id)
    assert (row["state"], row["error_type"], row["attempts"]) == ("done", None, 1)
    assert await queue.failures(LIB) == []
    status = await queue.status(LIB)
    assert (status.retrying, status.done, status.by_error_type) == (0, 1, {})
