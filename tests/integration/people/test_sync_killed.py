"""A `facescan people sync` killed with SIGKILL in the middle loses nothing: every face is
either matched as a whole batch was (committed) or untouched, and the next sync goes on
where it stopped and ends with every face where an uninterrupted sync puts it."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from facescan_people.enrol import add_person
from facescan_people.repository import PeopleDb
from facescan_queue.repository import Queue
from tests.integration.people.support import LIB, dlib_like, insert_faces, reference

pytestmark = pytest.mark.slow

FACESCAN = Path(sys.executable).parent / "facescan"
PEOPLE, FACES_EACH, STRANGERS, BATCH = 40, 60, 600, 20


async def _considered(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM facescan.face_people"))


async def test_a_sync_killed_midway_loses_nothing_and_the_next_one_finishes(
    queue: Queue, people: PeopleDb, db: asyncpg.Connection, dsn: str
) -> None:
    data = dlib_like(seed=5, people=PEOPLE, faces_each=FACES_EACH, strangers=STRANGERS)
    # one known photo per person first, each person added from it
    await insert_faces(db, data["faces"][::FACES_EACH][:PEOPLE], "known")
    for k in range(PEOPLE):
        known = await reference(db, f"known/{k:06d}.jpg")
        await add_person(people, LIB, f"Person {k:02d}", [known])
    assert await _considered(db) == PEOPLE
    # then the library's other photos: new to matching
    new = await insert_faces(db, data["faces"], "later")
    await db.execute("ANALYZE")

    sync = subprocess.Popen(
        [str(FACESCAN), "people", "sync", "--batch-size", str(BATCH), "--dsn", dsn],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while await _considered(db) < PEOPLE + 3 * BATCH:
        assert sync.poll() is None, f"the sync ended first, exit {sync.returncode}"
        assert time.monotonic() < deadline, "the sync committed nothing in 60 s"
        await asyncio.sleep(0.005)
    os.kill(sync.pid, signal.SIGKILL)
    assert sync.wait(timeout=10) == -signal.SIGKILL

    considered = await _considered(db) - PEOPLE
    assert 3 * BATCH <= considered < len(new), "killed too late to test anything"
    assert considered % BATCH == 0, f"a batch half-written: {considered} faces considered"
    rows = await db.fetch(
        "SELECT f.id FROM facescan.faces f JOIN facescan.face_people fp ON fp.face_id = f.id "
        "WHERE f.id = ANY($1::bigint[]) ORDER BY f.id",
        new,
    )
    assert [r[0] for r in rows] == new[:considered]  # whole batches, in face order
    await _assert_where_they_belong(db, new[:considered])

    again = await asyncio.to_thread(
        subprocess.run,
        [str(FACESCAN), "people", "sync", "--batch-size", str(BATCH), "--json", "--dsn", dsn],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert f'"considered": {len(new) - considered},' in again.stdout
    assert await _considered(db) == PEOPLE + len(new)
    await _assert_where_they_belong(db, new)


async def _assert_where_they_belong(db: asyncpg.Connection, faces: list[int]) -> None:
    """Face i of the later photos is person i // FACES_EACH's (tagged), the strangers'
    faces nobody's."""
    rows = await db.fetch(
        "SELECT f.id, p.name, fp.status::text AS status FROM facescan.faces f "
        "JOIN facescan.face_people fp ON fp.face_id = f.id "
        "LEFT JOIN facescan.people p ON p.id = fp.person_id "
        "WHERE f.id = ANY($1::bigint[]) ORDER BY f.id",
        faces,
    )
    assert len(rows) == len(faces)
    wrong = []
    for i, row in enumerate(rows):
        k = i // FACES_EACH
        expected = (f"Person {k:02d}", "matched") if k < PEOPLE else (None, None)
        if (row["name"], row["status"]) != expected:
            wrong.append((i, row["name"], row["status"], expected))
    assert wrong == []
