"""Bad files in a batch: each one gets its own typed failure naming the file, and the
good photographs of the same batch are still detected and committed.

Tests run as root, and root reads a mode-000 file: the detector runs without the
capabilities that bypass file modes, so the unreadable file is really unreadable."""

from __future__ import annotations

import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import asyncpg
import pytest

from facescan_queue.repository import Queue
from facescan_queue.types import ErrorType
from tests.integration.detector.support import (
    LIB,
    SAMPLES,
    copy_samples,
    face_counts,
    images_by_path,
    png_header_only,
    register_and_claim,
    run_detector,
)

CAP_DAC_OVERRIDE = 1
CAP_DAC_READ_SEARCH = 2
PR_CAPBSET_DROP = 24
SOCKET = ".s.PGSQL.5432"


@pytest.fixture
def without_permission_override() -> Callable[[], None]:
    """A preexec_fn that drops the capabilities to bypass file modes from the child's
    bounding set, as a pod with ``capabilities: drop: [ALL]`` runs: a mode-000 file is
    then unreadable even to uid 0. (Switching to ``nobody`` is not possible here: the
    interpreter lives under /root, which is 0700.)"""
    if os.geteuid() != 0:
        return lambda: None  # an unprivileged user cannot read a mode-000 file anyway
    libc = ctypes.CDLL(None, use_errno=True)

    def drop() -> None:
        for capability in (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH):
            if libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")

    return drop


@pytest.fixture
def capless_dsn(dsn: str, tmp_path: Path) -> str:
    """The test database's DSN, reachable without the capabilities dropped above.

    Its unix socket lies in PostgreSQL's 0700 data directory, owned by another user; a
    hard link to the socket in a directory of ours reaches the same server."""
    host = parse_qs(urlsplit(dsn).query)["host"][0]
    linked = tmp_path / "socket"
    linked.mkdir()
    os.link(Path(host) / SOCKET, linked / SOCKET)
    return dsn.replace(f"host={host}", f"host={linked}")


BAD: dict[str, ErrorType] = {
    "bad/truncated.jpg": ErrorType.DECODE,
    "bad/empty.jpg": ErrorType.DECODE,
    "bad/notes.jpg": ErrorType.DECODE,
    "bad/escape.jpg": ErrorType.PERMISSION,
    "bad/gone.jpg": ErrorType.MISSING,
    "bad/locked.jpg": ErrorType.PERMISSION,
    "bad/huge.png": ErrorType.DECODE,
}


def make_bad_files(root: Path) -> None:
    bad = root / "bad"
    bad.mkdir()
    data = (SAMPLES / "obama.jpg").read_bytes()
    (bad / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "notes.jpg").write_text("shopping list: milk, eggs\n")
    (bad / "escape.jpg").symlink_to(SAMPLES / "obama.jpg")  # a real photo, outside the root
    (bad / "locked.jpg").write_bytes(data)
    (bad / "huge.png").write_bytes(png_header_only(100_000, 100_000))
    (bad / "locked.jpg").chmod(0o000)


async def test_each_bad_file_gets_its_typed_failure_and_the_batch_goes_on(
    hog_queue: Queue,
    db: asyncpg.Connection,
    capless_dsn: str,
    root: Path,
    without_permission_override: Callable[[], None],
) -> None:
    good = copy_samples(root, ["obama.jpg", "cameraman.png", "astronaut.png"])
    make_bad_files(root)
    # good images first, between and after the bad ones
    paths = [good[0], *list(BAD)[:4], good[1], *list(BAD)[4:], good[2]]
    await register_and_claim(hog_queue, paths, "job-bad")

    run = await run_detector(capless_dsn, "job-bad", root, preexec_fn=without_permission_override)

    assert run.returncode == 0, run.stderr
    assert (run.summary["done"], run.summary["failed"]) == (3, len(BAD))
    failures = {f.path: f for f in await hog_queue.failures(LIB)}
    assert {path: f.error_type for path, f in failures.items()} == BAD
    for path, failure in failures.items():
        assert path in failure.last_error
        assert (failure.attempts, failure.dead, failure.last_model) == (1, False, "hog")
    images = await images_by_path(db)
    assert {p: images[p]["state"] for p in good} == dict.fromkeys(good, "done")
    assert {p: images[p]["state"] for p in BAD} == dict.fromkeys(BAD, "pending")
    counts = await face_counts(db)
    assert [counts[p] for p in good] == [1, 0, 2]
    assert (
        await db.fetchval("SELECT count(*) FROM facescan.attempts WHERE finished_at IS NULL") == 0
    )
