"""A `facescan people cluster` killed with SIGKILL in the middle of a few thousand faces
leaves only whole batches (every unnamed person complete: enough faces, a featured face,
one face per photo), and the next run finishes the library."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
import pytest

from facescan_people import synthetic
from facescan_queue.repository import Queue
from tests.integration.people.cluster_support import (
    assert_well_formed,
    holders,
    insert_dataset,
    scores,
)

pytestmark = pytest.mark.slow

FACESCAN = Path(sys.executable).parent / "facescan"
BATCH = 50


async def _people(db: asyncpg.Connection) -> int:
    return int(await db.fetchval("SELECT count(*) FROM facescan.people"))


async def test_a_cluster_run_killed_midway_leaves_whole_batches_and_the_next_run_finishes(
    queue: Queue, db: asyncpg.Connection, dsn: str
) -> None:
    del queue  # it makes the library
    ds = synthetic.generate(3000, 150, synthetic.DLIB, lookalike_pairs=10, seed=8)
    faces = await insert_dataset(db, ds, "lib")
    command = [str(FACESCAN), "people", "cluster", "--batch-size", str(BATCH), "--dsn", dsn]

    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while await _people(db) < 10:
        assert run.poll() is None, f"the run ended first, exit {run.returncode}"
        assert time.monotonic() < deadline, "the run committed nothing in 120 s"
        await asyncio.sleep(0.01)
    os.kill(run.pid, signal.SIGKILL)
    assert run.wait(timeout=10) == -signal.SIGKILL

    held = [x for x in await holders(db, faces) if x is not None]
    assert 0 < len(held) < len(faces) * 0.8, "killed too late to test anything"
    await assert_well_formed(db)  # no batch half-written

    again = await asyncio.to_thread(
        subprocess.run, [*command, "--json"], capture_output=True, text=True, check=False
    )
    assert again.returncode == 0, again.stderr
    (report,) = json.loads(again.stdout.splitlines()[-1])["libraries"]
    assert report["considered"] > 0
    labels = await holders(db, faces)
    assert scores(ds, labels).f >= 0.85, scores(ds, labels)
    assert report["unassigned"]
    assert len(report["unassigned"]) == labels.count(None)
    await assert_well_formed(db)
