"""Fencing: a detector whose lease was taken over commits nothing, whether the lease went
before it started or while it was working through its batch; another worker then
processes the images."""

from __future__ import annotations

import signal
from datetime import datetime
from pathlib import Path

import asyncpg

from facescan_queue.models import NewImage
from facescan_queue.repository import Queue
from tests.integration.detector.support import (
    LIB,
    UNKNOWN_SIZE,
    copy_rolls,
    copy_samples,
    detector_env,
    finish,
    images_by_path,
    register_and_claim,
    run_detector,
    start_detector,
    wait_for_detections,
)


async def test_worker_whose_lease_was_released_commits_nothing_and_another_takes_over(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    paths = copy_samples(root, ["obama.jpg", "cameraman.png", "astronaut.png"])
    await register_and_claim(hog_queue, paths, "job-a")
    started = await hog_queue.start_next("job-a")  # A was at its first image...
    assert started is not None
    released = await hog_queue.release("job-a")  # ...when the control plane took it back
    assert released.released == 3
    claimed = await hog_queue.claim(
        LIB, "job-b", step=0, size_class=UNKNOWN_SIZE, limit=10, lease_seconds=120
    )
    assert len(claimed) == 3

    late = await run_detector(dsn, "job-a", root)

    assert late.returncode == 0, late.stderr
    assert (late.summary["done"], late.summary["failed"]) == (0, 0)
    assert await db.fetchval("SELECT count(*) FROM facescan.detections") == 0
    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == 0
    images = await images_by_path(db)
    assert {r["state"] for r in images.values()} == {"leased"}
    assert {r["lease_owner"] for r in images.values()} == {"job-b"}

    rightful = await run_detector(dsn, "job-b", root)

    assert rightful.returncode == 0, rightful.stderr
    assert rightful.summary["done"] == 3
    status = await hog_queue.status(LIB)
    assert (status.done, status.faces) == (3, 3)
    history = await db.fetch("SELECT worker, outcome::text FROM facescan.attempts ORDER BY id")
    assert [tuple(r) for r in history] == [("job-a", "released")] + [("job-b", "done")] * 3


async def committed(db: asyncpg.Connection) -> set[tuple[int, datetime]]:
    """(image, when) of every committed detection."""
    rows = await db.fetch("SELECT image_id, detected_at FROM facescan.detections")
    return {(r["image_id"], r["detected_at"]) for r in rows}


async def test_lease_released_mid_batch_ends_the_run_and_nothing_is_committed_after(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    paths = copy_rolls(root, "obama.jpg", 12)
    await register_and_claim(hog_queue, paths, "job-a")
    process = await start_detector(dsn, "job-a", root)

    await wait_for_detections(db, 1)
    await hog_queue.release("job-a")
    done_at_release = await committed(db)
    faces_at_release = await db.fetchval("SELECT count(*) FROM facescan.faces")
    run = await finish(process)

    assert run.returncode == 0, run.stderr
    assert run.summary["reason"].startswith("lease lost")
    assert await committed(db) == done_at_release
    assert await db.fetchval("SELECT count(*) FROM facescan.faces") == faces_at_release
    assert 1 <= len(done_at_release) < len(paths)
    assert run.summary["done"] == len(done_at_release)
    states = [r["state"] for r in (await images_by_path(db)).values()]
    assert states.count("done") == len(done_at_release)
    assert states.count("pending") == len(paths) - len(done_at_release)
    assert await db.fetchval("SELECT count(*) FROM facescan.failures") == 0


async def test_sigterm_hands_the_lease_back_uncharged_and_exits_143(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    """A pod evicted, preempted or deleted: the image in progress and the rest of the
    batch go back to the queue, no attempt charged; what was committed stays."""
    paths = copy_rolls(root, "group_t1.jpg", 12)
    await register_and_claim(hog_queue, paths, "job-a")
    process = await start_detector(dsn, "job-a", root)
    await wait_for_detections(db, 1)
    process.send_signal(signal.SIGTERM)
    run = await finish(process, timeout=30)

    assert run.returncode == 143, run.stderr
    assert run.summary["reason"] == "terminated (SIGTERM): the lease handed back uncharged"
    history = await db.fetch("SELECT outcome::text AS o, error_type FROM facescan.attempts")
    assert {r["o"] for r in history} <= {"done", "released"}
    assert all(r["error_type"] is None for r in history)
    assert await db.fetchval("SELECT count(*) FROM facescan.failures") == 0
    images = await images_by_path(db)
    done = [p for p, r in images.items() if r["state"] == "done"]
    assert 1 <= len(done) < 12
    assert {r["state"] for p, r in images.items() if p not in done} == {"pending"}
    assert {r["lease_owner"] for r in images.values()} == {None}
    assert await db.fetchval("SELECT count(*) FROM facescan.leases") == 0


async def test_a_job_s_detector_claims_its_own_batch_and_a_late_one_ends_at_once(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path
) -> None:
    """As a Job runs it: the assignment (library, step, size class, batch size) in its
    environment, nothing leased before it starts. A second Job of the same group that
    starts after the first took everything finds nothing and exits 0 without a lease."""
    paths = copy_samples(root, ["obama.jpg", "cameraman.png", "astronaut.png"])
    assert await hog_queue.register(LIB, [NewImage(p) for p in paths]) == 3
    assignment = {
        "FACESCAN_LIBRARY": LIB,
        "FACESCAN_STEP": "0",
        "FACESCAN_SIZE_CLASS": str(UNKNOWN_SIZE),
        "FACESCAN_BATCH_SIZE": "2",
    }

    first = await run_detector(dsn, "scan-s0c5-aaaaaa", root, env=detector_env(dsn, **assignment))
    assert first.returncode == 0, first.stderr
    assert first.summary["done"] == 2  # its batch size, no more
    second = await run_detector(dsn, "scan-s0c5-bbbbbb", root, env=detector_env(dsn, **assignment))
    assert (second.returncode, second.summary["done"]) == (0, 1), second.stderr
    late = await run_detector(dsn, "scan-s0c5-cccccc", root, env=detector_env(dsn, **assignment))
    assert (late.returncode, late.summary["done"], late.summary["failed"]) == (0, 0, 0)

    images = await images_by_path(db)
    assert {r["state"] for r in images.values()} == {"done"}
    history = await db.fetch("SELECT worker, outcome::text FROM facescan.attempts ORDER BY id")
    assert sorted(tuple(r) for r in history) == [
        ("scan-s0c5-aaaaaa", "done"),
        ("scan-s0c5-aaaaaa", "done"),
        ("scan-s0c5-bbbbbb", "done"),
    ]
    assert await hog_queue.leases(LIB) == []
