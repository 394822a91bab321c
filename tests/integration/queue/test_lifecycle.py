"""The happy path of an image: start, (step down,) complete; and what complete refuses."""

from __future__ import annotations

import asyncpg
import pytest

from facescan_queue import errors
from facescan_queue.defaults import DEFAULT_CASCADE
from facescan_queue.models import FaceResult, LibraryPolicy
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType

from .support import (
    LIB,
    claim,
    claim_and_start,
    face,
    face_count,
    image_row,
    make_due,
    register,
    result,
)


async def _vector_dims(db: asyncpg.Connection, image_id: int) -> list[tuple[int | None, ...]]:
    rows = await db.fetch(
        "SELECT vector_dims(embedding_dlib) AS dlib, vector_dims(embedding_arcface) AS arc"
        " FROM facescan.faces WHERE image_id = $1 ORDER BY id",
        image_id,
    )
    return [(r["dlib"], r["arc"]) for r in rows]


async def test_start_next_gives_each_step_of_the_default_cascade(queue: Queue) -> None:
    await register(queue, 1)
    seen = []
    for step in range(len(DEFAULT_CASCADE)):
        started = await claim_and_start(queue, f"w{step}", step=step)
        assert started.step == step
        seen.append((started.model, round(started.scale, 2)))
        await queue.fail(started.image_id, f"w{step}", ErrorType.TIMEOUT, "too slow")
        await queue.release(f"w{step}")
    assert tuple(seen) == DEFAULT_CASCADE  # the schema's default is the one in defaults.py


async def test_a_library_policy_changes_the_cascade(queue: Queue) -> None:
    policy = LibraryPolicy(cascade_models=("insightface", "hog"), cascade_scales=(1.0, 0.5))
    library = await queue.ensure_library(LIB, policy)
    assert library.cascade == (("insightface", 1.0), ("hog", 0.5))
    await register(queue, 1)

    first = await claim_and_start(queue, "w1")
    assert (first.step, first.model, first.scale) == (0, "insightface", 1.0)
    stepped = await queue.step_down(first.image_id, "w1", "CUDA out of memory")
    assert stepped is not None
    assert (stepped.step, stepped.model, stepped.scale) == (1, "hog", 0.5)
    assert await queue.step_down(first.image_id, "w1", "again") is None


async def test_start_next_returns_the_claimed_image_and_opens_an_attempt(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    (claimed,) = await claim(queue, "w1")
    started = await queue.start_next("w1")

    assert started is not None
    assert (started.image_id, started.path, started.width, started.height) == (
        claimed.image_id,
        claimed.path,
        1000,
        1000,
    )
    attempt = await db.fetchrow("SELECT * FROM facescan.attempts WHERE id = $1", started.attempt_id)
    assert attempt is not None
    assert (attempt["worker"], attempt["step"], attempt["model"], attempt["outcome"]) == (
        "w1",
        0,
        "cnn",
        None,
    )
    row = await image_row(db, started.image_id)
    assert (row["state"], row["started_attempt"]) == ("leased", started.attempt_id)


async def test_start_next_returns_the_image_in_progress_instead_of_a_second_one(
    queue: Queue,
) -> None:
    await register(queue, 2)
    started = await claim_and_start(queue, "w1", limit=2)

    # a worker that lost the reply of start_next gets the same image, same attempt
    assert await queue.start_next("w1") == started

    await queue.complete(started.image_id, "w1", result())
    second = await queue.start_next("w1")
    assert second is not None
    assert second.image_id != started.image_id


async def test_start_next_returns_none_when_the_lease_is_exhausted(queue: Queue) -> None:
    await register(queue, 2)
    await claim(queue, "w1")
    for _ in range(2):
        started = await queue.start_next("w1")
        assert started is not None
        await queue.complete(started.image_id, "w1", result())
    assert await queue.start_next("w1") is None
    assert await queue.start_next("nobody") is None


async def test_complete_stores_boxes_and_embeddings_of_both_sizes(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")
    faces = [face(0, dims=128), face(1, dims=512), face(2, dims=128)]

    await queue.complete(started.image_id, "w1", result(faces, width=1000))

    assert await _vector_dims(db, started.image_id) == [(128, None), (None, 512), (128, None)]
    stored = await db.fetch(
        "SELECT box_top, box_right, box_bottom, box_left, score, landmarks, model,"
        " embedding_dlib::text AS dlib FROM facescan.faces WHERE image_id = $1 ORDER BY id",
        started.image_id,
    )
    assert [(r[0], r[1], r[2], r[3]) for r in stored] == [
        (f.top, f.right, f.bottom, f.left) for f in faces
    ]
    assert stored[0]["score"] == pytest.approx(0.9)
    assert stored[0]["landmarks"] == [1.0, 2.0, 3.0, 4.0]
    assert stored[0]["model"] == "cnn"
    assert stored[0]["dlib"].startswith("[0,0.001,0.002")

    row = await queue.image(LIB, started.path)
    assert (row["state"], row["face_count"], row["degraded"], row["model"]) == (
        "done",
        3,
        False,
        "cnn",
    )
    assert (row["original_width"], row["original_height"]) == (1000, 1000)
    assert len(await queue.faces(started.image_id)) == 3
    attempt = await db.fetchval(
        "SELECT outcome::text FROM facescan.attempts WHERE id = $1", started.attempt_id
    )
    assert attempt == "done"
    status = await queue.status(LIB)
    assert (status.done, status.faces, status.degraded) == (1, 3, 0)


async def test_a_face_without_an_embedding_is_stored(queue: Queue, db: asyncpg.Connection) -> None:
    # FaceResult.embedding is optional (a detector may find boxes without recognition)
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")

    await queue.complete(started.image_id, "w1", result([face(0, dims=None), face(1)]))

    assert await _vector_dims(db, started.image_id) == [(None, None), (128, None)]
    assert (await image_row(db, started.image_id))["state"] == "done"


async def test_zero_faces_is_a_done_image_with_a_detection_row(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")

    await queue.complete(started.image_id, "w1", result([]))

    detection = await db.fetchrow(
        "SELECT * FROM facescan.detections WHERE image_id = $1", started.image_id
    )
    assert detection is not None
    assert (detection["face_count"], detection["worker"], detection["step"]) == (0, "w1", 0)
    assert (detection["max_dimension"], detection["duration_ms"]) == (1280, 42)
    row = await image_row(db, started.image_id)
    assert (row["state"], row["face_count"], row["lease_owner"]) == ("done", 0, None)


async def test_an_embedding_of_the_wrong_size_commits_nothing(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")

    for dims in (100, 127, 0):
        with pytest.raises(errors.InvalidArgument, match="128"):
            await queue.complete(started.image_id, "w1", result([face(0), face(1, dims=dims)]))

    row = await image_row(db, started.image_id)
    assert (row["state"], row["lease_owner"], row["started_attempt"]) == (
        "leased",
        "w1",
        started.attempt_id,
    )
    assert await face_count(db, started.image_id) == 0
    assert await db.fetchval("SELECT count(*) FROM facescan.detections") == 0
    # the holder can still commit a good result
    await queue.complete(started.image_id, "w1", result([face(0)]))
    assert await face_count(db, started.image_id) == 1


async def test_an_inverted_face_box_is_refused_with_a_typed_error(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")
    inverted = FaceResult(top=50, right=10, bottom=60, left=40, embedding=(0.0,) * 128)

    with pytest.raises(errors.InvalidArgument):
        await queue.complete(started.image_id, "w1", result([inverted]))

    assert (await image_row(db, started.image_id))["state"] == "leased"


async def test_completing_an_image_never_started_is_an_illegal_transition(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 2)
    first, second = await claim(queue, "w1", limit=2)

    with pytest.raises(errors.IllegalTransition, match="never started"):
        await queue.complete(first.image_id, "w1", result([face()]))
    with pytest.raises(errors.IllegalTransition, match="never started"):
        await queue.fail(second.image_id, "w1", ErrorType.CRASH, "x")
    with pytest.raises(errors.IllegalTransition, match="never started"):
        await queue.step_down(second.image_id, "w1", "x")

    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == 0
    assert (await image_row(db, first.image_id))["state"] == "leased"


async def test_completing_an_unknown_image_is_refused(queue: Queue) -> None:
    with pytest.raises(errors.UnknownImage, match="424242"):
        await queue.complete(424242, "w1", result())
    with pytest.raises(errors.UnknownImage):
        await queue.fail(424242, "w1", ErrorType.CRASH, "x")
    with pytest.raises(errors.UnknownImage):
        await queue.image(LIB, "no/such.jpg")


async def test_completing_another_holders_image_is_lease_lost(queue: Queue) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")
    with pytest.raises(errors.LeaseLost, match="not leased to w2"):
        await queue.complete(started.image_id, "w2", result([face()]))


async def test_a_released_holder_cannot_commit_over_the_new_holder(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    old = await claim_and_start(queue, "old")
    await queue.release("old")  # preempted
    new = await claim_and_start(queue, "new")
    assert new.image_id == old.image_id

    with pytest.raises(errors.LeaseLost):
        await queue.complete(old.image_id, "old", result([face(7)]))
    await queue.complete(new.image_id, "new", result([face(1), face(2)]))
    with pytest.raises(errors.LeaseLost, match="is done"):
        await queue.complete(old.image_id, "old", result([face(7)]))

    boxes = await db.fetch(
        "SELECT box_top FROM facescan.faces WHERE image_id = $1 ORDER BY box_top", new.image_id
    )
    assert [r[0] for r in boxes] == [10, 20]
    worker = await db.fetchval(
        "SELECT worker FROM facescan.detections WHERE image_id = $1", new.image_id
    )
    assert worker == "new"


async def test_rerunning_an_image_never_duplicates_faces(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    faces = [face(0), face(1, dims=512)]
    started = await claim_and_start(queue, "w1")
    await queue.complete(started.image_id, "w1", result(faces))

    assert await queue.rescan(LIB, only_degraded=False) == 1
    assert await face_count(db, started.image_id) == 2  # kept until replaced
    again = await claim_and_start(queue, "w2")
    assert again.image_id == started.image_id
    await queue.complete(again.image_id, "w2", result(faces))

    assert await face_count(db, started.image_id) == 2
    assert await db.fetchval("SELECT count(*) FROM facescan.detections") == 1
    status = await queue.status(LIB)
    assert (status.done, status.faces) == (1, 2)


async def test_a_result_from_a_later_step_is_degraded(queue: Queue, db: asyncpg.Connection) -> None:
    await register(queue, 2)
    # in-process step-down
    a = await claim_and_start(queue, "w1")
    await queue.step_down(a.image_id, "w1", "CUDA out of memory")
    await queue.complete(a.image_id, "w1", result([face()]))
    # host OOM: the operator charges oom, the image runs again at the next step
    b = await claim_and_start(queue, "w2")
    await queue.fail(b.image_id, "w2", ErrorType.OOM, "OOMKilled")
    b2 = await claim_and_start(queue, "w3", step=1)
    assert b2.image_id == b.image_id
    await queue.complete(b2.image_id, "w3", result())

    degraded = await db.fetch(
        "SELECT i.degraded, d.degraded AS d, d.scale FROM facescan.images i"
        " JOIN facescan.detections d ON d.image_id = i.id"
    )
    assert [(r[0], r[1], r[2]) for r in degraded] == [(True, True, 0.75)] * 2
    assert (await queue.status(LIB)).degraded == 2


async def test_a_rescan_at_full_quality_clears_degraded(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 2)
    a = await claim_and_start(queue, "w1")
    await queue.step_down(a.image_id, "w1", "oom")
    await queue.complete(a.image_id, "w1", result([face()]))
    b = await claim_and_start(queue, "w2")
    await queue.complete(b.image_id, "w2", result([face()]))
    assert (await queue.status(LIB)).degraded == 1

    assert await queue.rescan(LIB) == 1  # only the degraded one
    rescanned = await claim_and_start(queue, "w3")
    assert (rescanned.image_id, rescanned.step, rescanned.scale) == (a.image_id, 0, 1.0)
    await queue.complete(rescanned.image_id, "w3", result([face()]))

    status = await queue.status(LIB)
    assert (status.done, status.degraded, status.faces) == (2, 0, 2)


async def test_step_down_closes_the_attempt_as_oom_and_opens_the_next_step(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")

    next_step = await queue.step_down(started.image_id, "w1", "CUDA out of memory")

    assert next_step is not None
    assert (next_step.step, next_step.model, next_step.scale) == (1, "cnn", 0.75)
    attempts = await db.fetch(
        "SELECT id, step, scale, outcome::text, error_type::text, error, finished_at"
        " FROM facescan.attempts ORDER BY id"
    )
    assert [(r["step"], r["outcome"], r["error_type"], r["error"]) for r in attempts] == [
        (0, "failed", "oom", "CUDA out of memory"),
        (1, None, None, None),
    ]
    assert attempts[0]["finished_at"] is not None
    assert attempts[1]["id"] == next_step.attempt_id
    row = await image_row(db, started.image_id)
    assert (row["state"], row["step"], row["attempts"], row["started_attempt"]) == (
        "leased",
        1,
        0,
        next_step.attempt_id,
    )


async def test_step_down_returns_none_at_the_last_step(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")
    steps = []
    while (step := await queue.step_down(started.image_id, "w1", "oom")) is not None:
        steps.append((step.step, step.model))
    assert steps == [(1, "cnn"), (2, "cnn"), (3, "cnn"), (4, "cnn"), (5, "hog")]

    row = await image_row(db, started.image_id)
    assert (row["state"], row["step"]) == ("leased", 5)
    # the last step's attempt stays open: the worker reports the failure itself
    outcome = await queue.fail(started.image_id, "w1", ErrorType.OOM, "hog ran out too")
    assert (outcome.state, outcome.step) == ("pending", 5)
    assert (await image_row(db, started.image_id))["attempts"] == 1


async def test_a_step_down_by_someone_else_is_lease_lost(queue: Queue) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")
    with pytest.raises(errors.LeaseLost):
        await queue.step_down(started.image_id, "w2", "oom")


async def test_a_done_image_cannot_be_failed_or_completed_again(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    started = await claim_and_start(queue, "w1")
    await queue.complete(started.image_id, "w1", result([face()]))
    await make_due(db)

    with pytest.raises(errors.LeaseLost, match="is done"):
        await queue.fail(started.image_id, "w1", ErrorType.CRASH, "late")
    with pytest.raises(errors.LeaseLost):
        await queue.complete(started.image_id, "w2", result())
    # the same holder retrying its commit (reply lost) changes nothing and raises nothing
    await queue.complete(started.image_id, "w1", result())
    assert await face_count(db, started.image_id) == 1
    assert await claim(queue, "w2") == []


async def test_the_guard_refuses_an_illegal_state_change_whoever_makes_it(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 1)
    with pytest.raises(asyncpg.PostgresError, match="illegal transition") as caught:
        await db.execute("UPDATE facescan.images SET state = 'done'")
    assert caught.value.sqlstate == "FS002"
    with pytest.raises(asyncpg.PostgresError, match="pending -> dead"):
        await db.execute("UPDATE facescan.images SET state = 'dead'")


async def test_complete_and_start_next_commits_and_opens_the_next_image(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 2)
    first = await claim_and_start(queue, "w1", limit=2)
    assert await queue.peek_next("w1") == "img/00001.jpg"

    second = await queue.complete_and_start_next(first.image_id, "w1", result([face()]))

    assert second is not None
    assert (second.path, second.step, second.model) == ("img/00001.jpg", 0, "cnn")
    assert (await image_row(db, first.image_id))["state"] == "done"
    assert (await image_row(db, second.image_id))["started_attempt"] == second.attempt_id
    assert await queue.peek_next("w1") is None
    assert await queue.complete_and_start_next(second.image_id, "w1", result()) is None
    assert (await queue.status(LIB)).done == 2


async def test_complete_and_start_next_is_fenced_and_starts_nothing_when_refused(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await register(queue, 2)
    first = await claim_and_start(queue, "w1", limit=2)
    await queue.release("w1")

    with pytest.raises(errors.LeaseLost):
        await queue.complete_and_start_next(first.image_id, "w1", result([face()]))

    assert await db.fetchval("SELECT count(*) FROM facescan.attempts WHERE outcome IS NULL") == 0
    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == 0
