"""Outages that are not the images' fault. A library that is not there (a dead or
missing mount): no image is charged for it; after three images in a row the detector
stops with exit status 75 and hands its remaining images back. A database connection
lost in the middle of a commit: the run goes on once it is back."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest
from pydantic import SecretStr

from facescan_detector.run import run
from facescan_queue.errors import DatabaseUnavailable
from facescan_queue.models import DetectionResult, StartedImage
from facescan_queue.repository import Queue
from facescan_queue.settings import DatabaseSettings
from tests.integration.detector.support import (
    LIB,
    attempts_of,
    copy_rolls,
    copy_samples,
    detector_settings,
    finish,
    images_by_path,
    register_and_claim,
    run_detector,
    start_detector,
    untouched,
    wait_for_detections,
)

EXIT_UNAVAILABLE = 75
MAX_UNAVAILABLE = 3
"""Images failing as unavailable in a row before the detector gives up (its default)."""


async def assert_unavailable_uncharged(db: asyncpg.Connection, paths: list[str]) -> None:
    """Each image failed once as unavailable: back to pending later, nothing charged."""
    images = await images_by_path(db)
    for path in paths:
        image = images[path]
        assert (image["state"], image["attempts"], image["error_type"]) == ("pending", 0, None)
        [attempt] = await attempts_of(db, path)
        assert (attempt["outcome"], attempt["error_type"]) == ("failed", "unavailable")
        assert "library root" in attempt["error"]
    waits = await db.fetch(
        "SELECT extract(epoch FROM next_attempt_at - now()) AS s FROM facescan.images"
        " WHERE path = ANY($1)",
        paths,
    )
    assert all(r["s"] > 30 for r in waits)  # retried after the library's delay, not now
    assert await db.fetchval("SELECT count(*) FROM facescan.failures") == 0


async def test_missing_library_root_stops_after_three_images_and_charges_none(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, tmp_path: Path
) -> None:
    paths = [f"album/{i}.jpg" for i in range(6)]
    await register_and_claim(hog_queue, paths, "job-a")

    run = await run_detector(dsn, "job-a", tmp_path / "not-mounted")

    assert run.returncode == EXIT_UNAVAILABLE, run.stderr
    assert run.summary["reason"].startswith("library unavailable")
    await assert_unavailable_uncharged(db, paths[:MAX_UNAVAILABLE])
    images = await images_by_path(db)
    assert all(untouched(images[p]) for p in paths[MAX_UNAVAILABLE:])
    assert [await attempts_of(db, p) for p in paths[MAX_UNAVAILABLE:]] == [[]] * 3
    status = await hog_queue.status(LIB)
    assert (status.pending, status.leased, status.retrying, status.by_error_type) == (6, 0, 0, {})
    assert await db.fetchval("SELECT count(*) FROM facescan.leases") == 0


async def test_library_root_gone_mid_batch_stops_the_run_and_hands_the_rest_back(
    hog_queue: Queue, db: asyncpg.Connection, dsn: str, root: Path, tmp_path: Path
) -> None:
    paths = copy_rolls(root, "obama.jpg", 10)
    await register_and_claim(hog_queue, paths, "job-a")
    process = await start_detector(dsn, "job-a", root)

    await wait_for_detections(db, 1)
    root.rename(tmp_path / "unmounted")  # the mount point vanishes at once
    run = await finish(process)

    assert run.returncode == EXIT_UNAVAILABLE, run.stderr
    images = await images_by_path(db)
    done = [p for p in paths if images[p]["state"] == "done"]
    failed = [p for p in paths if await attempts_of(db, p) and p not in done]
    # decoded before the root went: the image being detected when the first commit was
    # seen, and the next one, prefetched as soon as that one started
    assert 1 <= len(done) <= 3
    assert failed == paths[len(done) : len(done) + MAX_UNAVAILABLE]
    await assert_unavailable_uncharged(db, failed)
    rest = paths[len(done) + MAX_UNAVAILABLE :]
    assert rest
    assert all(untouched(images[p]) for p in rest)
    assert [await attempts_of(db, p) for p in rest] == [[]] * len(rest)


async def test_commit_whose_reply_was_lost_is_not_mistaken_for_a_stolen_lease(
    hog_queue: Queue,
    db: asyncpg.Connection,
    dsn: str,
    root: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    paths = copy_samples(root, ["obama.jpg", "cameraman.png", "astronaut.png"])
    await register_and_claim(hog_queue, paths, "job-a")
    commit = Queue.complete_and_start_next
    replies_lost = 0

    async def reply_lost_once(
        self: Queue, image_id: int, owner: str, result: DetectionResult
    ) -> StartedImage | None:
        """The first commit lands, then the connection drops before its reply."""
        nonlocal replies_lost
        following = await commit(self, image_id, owner, result)
        if replies_lost == 0:
            replies_lost += 1
            raise DatabaseUnavailable("connection lost before the reply of the commit")
        return following

    monkeypatch.setattr(Queue, "complete_and_start_next", reply_lost_once)

    summary = await run(detector_settings("job-a", root), DatabaseSettings(dsn=SecretStr(dsn)))

    assert replies_lost == 1
    assert await db.fetchval("SELECT count(*) FROM facescan.detections") == 3
    assert (summary.done, summary.exit_code, summary.reason) == (3, 0, "lease finished")
    assert await db.fetchval("SELECT count(*) FROM facescan.leases") == 0
