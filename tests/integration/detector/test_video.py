"""Videos through the real detector process: registered by the real walk (header only),
one queue item each, their sampled frames' faces committed with timestamps and tracks in
one commit; broken ones typed; a worker SIGKILLed mid-video loses and duplicates nothing.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import asyncpg
import pytest

from facescan_operator.registration import register_root
from facescan_queue.models import LibraryPolicy
from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType
from tests.integration.detector.support import (
    LIB,
    copy_samples,
    detector_env,
    finish,
    images_by_path,
    run_detector,
    start_detector,
)
from tests.videos import (
    BLACK_OBAMA_BIDEN,
    MKV_VP9,
    OBAMA_THROUGHOUT,
    make_audio_only,
    make_empty,
    make_truncated,
    make_video,
)

pytestmark = pytest.mark.slow


async def claim_everything(queue: Queue, owner: str) -> int:
    """Leases every runnable item of the library to ``owner`` (one group at a time, as
    the planner would, all under one lease name per group: owner, owner-1, ...)."""
    total = 0
    for n, group in enumerate(await queue.runnable_groups(LIB, cap=1000)):
        claimed = await queue.claim(
            LIB,
            owner if n == 0 else f"{owner}-{n}",
            step=group.step,
            size_class=group.size_class,
            limit=1000,
            lease_seconds=120,
        )
        total += len(claimed)
    return total


async def video_faces(db: asyncpg.Connection, path: str) -> list[tuple[int, int]]:
    """(frame_ms, track) of a video's committed faces, in time order."""
    rows = await db.fetch(
        "SELECT f.frame_ms, f.track FROM facescan.faces f JOIN facescan.images i"
        " ON i.id = f.image_id WHERE i.path = $1 ORDER BY f.frame_ms, f.box_left",
        path,
    )
    return [(r["frame_ms"], r["track"]) for r in rows]


async def test_a_video_s_frames_faces_are_committed_with_timestamps_and_tracks(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    make_video(root / "party.MP4")  # black 0-2 s, Obama 2-4 s, Biden 4-6 s
    make_video(root / "speech.mkv", OBAMA_THROUGHOUT, fmt=MKV_VP9)
    copy_samples(root, ["obama.jpg"])
    registration = await register_root(hog_queue, LIB, root)
    assert registration.images == 3
    images = await images_by_path(db)
    assert {p: r["kind"] for p, r in images.items()} == {
        "party.MP4": "video",
        "speech.mkv": "video",
        "obama.jpg": "image",
    }
    assert images["party.MP4"]["duration_ms"] == 6000
    assert (images["party.MP4"]["width"], images["party.MP4"]["height"]) == (960, 720)
    assert await claim_everything(hog_queue, "job-a") == 3

    for owner in {r["lease_owner"] for r in (await images_by_path(db)).values()}:
        run = await run_detector(dsn, owner, root, timeout=120)
        assert run.returncode == 0, run.stderr

    images = await images_by_path(db)
    assert {r["state"] for r in images.values()} == {"done"}
    # no face at 1 s (black), Obama at 2 and 3 s (one track), Biden at 4 and 5 s
    assert await video_faces(db, "party.MP4") == [(2000, 0), (3000, 0), (4000, 1), (5000, 1)]
    assert await video_faces(db, "speech.mkv") == [(t, 0) for t in (1000, 2000, 3000, 4000, 5000)]
    frames = await db.fetchval(
        "SELECT d.frames FROM facescan.detections d JOIN facescan.images i"
        " ON i.id = d.image_id WHERE i.path = 'party.MP4'"
    )
    assert frames == [1000, 2000, 3000, 4000, 5000]
    photo = await db.fetch(
        "SELECT f.frame_ms, f.track FROM facescan.faces f JOIN facescan.images i"
        " ON i.id = f.image_id WHERE i.path = 'obama.jpg'"
    )
    assert [tuple(r) for r in photo] == [(None, None)]
    status = await hog_queue.status(LIB)
    assert (status.images, status.videos, status.videos_done) == (3, 2, 2)
    assert (status.faces, status.video_faces) == (10, 9)


async def test_frames_per_video_and_spacing_come_from_the_library(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    await hog_queue.ensure_library(LIB, LibraryPolicy(frames_per_video=9, min_frame_spacing_s=2))
    make_video(root / "party.mp4")
    await register_root(hog_queue, LIB, root)
    await claim_everything(hog_queue, "job-a")
    run = await run_detector(dsn, "job-a", root, timeout=120)
    assert run.returncode == 0, run.stderr
    frames = await db.fetchval("SELECT frames FROM facescan.detections")
    assert frames == [2000, 4000]  # 9 asked, but 6 s at >= 2 s apart allows 2
    assert await video_faces(db, "party.mp4") == [(2000, 0), (4000, 1)]


@pytest.mark.parametrize(
    ("make", "error_type"),
    [
        (make_truncated, ErrorType.DECODE),
        (make_audio_only, ErrorType.DECODE),
        (make_empty, ErrorType.DECODE),
    ],
    ids=["truncated", "audio-only", "zero-byte"],
)
async def test_a_broken_video_is_typed_and_the_rest_of_the_batch_is_done(
    hog_queue: Queue,
    db: asyncpg.Connection,
    dsn: str,
    root: Path,
    make: object,
    error_type: ErrorType,
) -> None:
    make(root / "broken.mp4")  # type: ignore[operator]
    copy_samples(root, ["obama.jpg"])
    await register_root(hog_queue, LIB, root)
    await claim_everything(hog_queue, "job-a")
    for owner in {r["lease_owner"] for r in (await images_by_path(db)).values()}:
        run = await run_detector(dsn, owner, root, timeout=120)
        assert run.returncode == 0, run.stderr
    images = await images_by_path(db)
    assert images["broken.mp4"]["error_type"] == error_type
    assert images["broken.mp4"]["kind"] == "video"
    assert images["obama.jpg"]["state"] == "done"
    failure = await db.fetchrow("SELECT * FROM facescan.failures")
    assert "broken.mp4" in failure["last_error"]


async def test_a_video_gone_before_its_turn_is_missing(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    make_video(root / "gone.mov")
    await register_root(hog_queue, LIB, root)
    await claim_everything(hog_queue, "job-a")
    (root / "gone.mov").unlink()
    run = await run_detector(dsn, "job-a", root, timeout=120)
    assert run.returncode == 0, run.stderr
    assert (await images_by_path(db))["gone.mov"]["error_type"] == ErrorType.MISSING


async def test_a_video_decoding_past_the_time_limit_is_a_timeout(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    make_video(root / "slow.mp4", gop=1000)  # one key frame: each point decoded from 0
    await register_root(hog_queue, LIB, root)
    await claim_everything(hog_queue, "job-a")
    env = detector_env(dsn, FACESCAN_IMAGE_TIMEOUT_S="0.001")
    run = await run_detector(dsn, "job-a", root, env=env, timeout=120)
    assert run.returncode == 3, run.stderr  # EXIT_TIMEOUT
    assert (await images_by_path(db))["slow.mp4"]["error_type"] == ErrorType.TIMEOUT
    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == 0


async def test_a_worker_killed_mid_video_loses_nothing_and_duplicates_nothing(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    await hog_queue.ensure_library(LIB, LibraryPolicy(frames_per_video=20))
    make_video(root / "party.mp4", BLACK_OBAMA_BIDEN, fps=10)
    await register_root(hog_queue, LIB, root)
    await claim_everything(hog_queue, "job-a")
    process = await start_detector(dsn, "job-a", root, "--verbose")
    assert process.stderr is not None
    # the first frame detected: the video is in progress, nothing of it committed
    while b"frame at" not in (line := await asyncio.wait_for(process.stderr.readline(), 60)):
        assert line, "the detector ended before its first frame"
    process.send_signal(signal.SIGKILL)
    run = await finish(process)
    assert run.returncode == -signal.SIGKILL
    assert await db.fetchval("SELECT count(*) FROM facescan.detections") == 0
    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == 0
    assert (await images_by_path(db))["party.mp4"]["state"] == "leased"

    # the runner saw its worker die: the started video is charged (crash), then redone
    released = await hog_queue.release("job-a", charge=ErrorType.CRASH, error="killed")
    assert released.charged_image is not None
    assert await hog_queue.requeue(LIB) == 1  # its retry now rather than after the backoff
    await claim_everything(hog_queue, "job-b")
    again = await run_detector(dsn, "job-b", root, timeout=120)
    assert again.returncode == 0, again.stderr

    assert await db.fetchval("SELECT count(*) FROM facescan.detections") == 1
    faces = await video_faces(db, "party.mp4")
    stamps = await db.fetchval("SELECT frames FROM facescan.detections")
    assert len(stamps) == len(set(stamps)) >= 15  # 20 points, 10 fps: a few share a frame
    assert len(faces) == len({t for t, _ in faces})  # one face per frame, none twice
    assert {track for t, track in faces if 2000 <= t < 4000} == {0}  # Obama
    assert {track for t, track in faces if t >= 4000} == {1}  # Biden
    history = await db.fetch("SELECT outcome::text, error_type::text FROM facescan.attempts")
    assert [tuple(r) for r in history] == [("failed", "crash"), ("done", None)]
