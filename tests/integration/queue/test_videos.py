"""Videos in the queue: registered with their kind and duration, started with what the
detector needs to sample them, committed at once with every frame's faces, counted
apart in status, and a track counted once by People."""

from __future__ import annotations

import dataclasses

import asyncpg
import pytest

from facescan_queue import errors
from facescan_queue.models import DetectionResult, LibraryPolicy, NewImage, PeopleCounts
from facescan_queue.repository import Queue
from tests.integration.queue.support import LIB, claim_and_start, face, result

VIDEO = NewImage("clips/party.mp4", 1920, 1080, 5_000_000, None, "video", 6000)


def in_frame(i: int, frame_ms: int, track: int) -> object:
    return dataclasses.replace(face(i), frame_ms=frame_ms, track=track)


def video_result(*faces: object) -> DetectionResult:
    base = result(faces, width=1920)  # type: ignore[arg-type]
    return dataclasses.replace(base, original_height=1080, frames=(1000, 2000, 3000))


@pytest.fixture
async def db(dsn: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


async def test_a_video_is_started_with_its_sampling_and_committed_with_its_frames(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await queue.ensure_library(LIB, LibraryPolicy(frames_per_video=3, min_frame_spacing_s=0.5))
    assert await queue.register(LIB, [VIDEO, NewImage("a.jpg", 1000, 1000, 10)]) == 2
    started = await claim_and_start(queue, "w", size_class=1)  # 2 MP frames: class 1
    assert (started.kind, started.duration_ms) == ("video", 6000)
    assert (started.frames_per_video, started.min_frame_spacing_s) == (3, 0.5)

    faces = (in_frame(0, 1000, 0), in_frame(1, 2000, 0), in_frame(2, 2000, 1))
    await queue.complete(started.image_id, "w", video_result(*faces))

    rows = await db.fetch("SELECT frame_ms, track FROM facescan.faces ORDER BY id")
    assert [tuple(r) for r in rows] == [(1000, 0), (2000, 0), (2000, 1)]
    assert await db.fetchval("SELECT frames FROM facescan.detections") == [1000, 2000, 3000]
    image = await queue.image(LIB, VIDEO.path)
    assert (image["kind"], image["duration_ms"], image["face_count"]) == ("video", 6000, 3)
    status = await queue.status(LIB)
    assert (status.images, status.videos, status.videos_done) == (2, 1, 1)
    assert (status.faces, status.video_faces) == (3, 3)
    assert status.as_json()["videos"] == 1


async def test_a_face_with_a_malformed_timestamp_is_refused_and_nothing_lands(
    queue: Queue, db: asyncpg.Connection
) -> None:
    await queue.register(LIB, [VIDEO])
    started = await claim_and_start(queue, "w", size_class=1)
    bad = dataclasses.replace(face(0), frame_ms="soon")  # type: ignore[arg-type]
    with pytest.raises(errors.InvalidArgument, match="faces of image"):
        await queue.complete(started.image_id, "w", video_result(bad))
    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == 0
    assert (await queue.image(LIB, VIDEO.path))["state"] == "leased"


async def test_people_count_a_track_once_per_video(queue: Queue, db: asyncpg.Connection) -> None:
    await queue.register(LIB, [VIDEO])
    started = await claim_and_start(queue, "w", size_class=1)
    # one person in three frames (track 0), another in one (track 1)
    faces = (in_frame(0, 1000, 0), in_frame(1, 2000, 0), in_frame(2, 3000, 0))
    await queue.complete(started.image_id, "w", video_result(*faces, in_frame(3, 3000, 1)))
    assert await queue.people_counts(LIB) == PeopleCounts(people=0, unassigned=2)

    person = await db.fetchval(
        "INSERT INTO facescan.people (library, name) VALUES ($1, 'Ann') RETURNING id", LIB
    )
    first = await db.fetchval("SELECT min(id) FROM facescan.faces")
    await db.execute(
        "INSERT INTO facescan.face_people (face_id, image_id, person_id, source, status)"
        " VALUES ($1, $2, $3, 'user', 'matched')",
        first,
        started.image_id,
        person,
    )
    counts = await queue.people_counts(LIB)
    assert (counts.people, counts.assigned, counts.pending, counts.unassigned) == (1, 1, 0, 1)
